// k6 run -e TARGET=http://127.0.0.1:8089/in -e RATE=40000 -e DURATION=10s loadtest/receiver_ceiling.js
// POSTs 300-byte bodies with keep-alive to a local receiver: the HTTP ceiling Herald's drain rate
// is compared with. Loopback only.
import http from 'k6/http';
import { check } from 'k6';

const target = __ENV.TARGET || 'http://127.0.0.1:8089/in';
const body = JSON.stringify({ id: 0, pad: 'x'.repeat(300 - 20) }).slice(0, 300);

export const options = {
  scenarios: {
    ceiling: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 20000),
      timeUnit: '1s',
      duration: __ENV.DURATION || '10s',
      preAllocatedVUs: 64,
      maxVUs: 256,
    },
  },
  discardResponseBodies: true,
};

export default function () {
  const r = http.post(target, body, { headers: { 'Content-Type': 'application/json' } });
  check(r, { '2xx': (res) => res.status >= 200 && res.status < 300 });
}
