// k6 run -e TARGET=http://127.0.0.1:8021/ -e RATE=20000 -e DURATION=10s loadtest/relay.js
// POSTs DIDComm packed messages at `herald relay` at a constant arrival rate, spread over KEYS
// recipient keys; every answer must be 200 and the p99 at most 10 ms. `make loadtest` runs it
// against a fresh Redis and counts the queued entries afterwards. Loopback only.
//
// Requests go out in groups of BATCH (http.batch, each on its own keep-alive connection) at
// RATE/BATCH groups per second: on a two-core machine shared with the relay and Redis, k6 spends
// about 55 µs of CPU per single-request iteration and cannot offer 20,000 requests/s one at a
// time even to a server that does nothing; batching divides its per-iteration cost.
import http from 'k6/http';
import encoding from 'k6/encoding';

const target = __ENV.TARGET || 'http://127.0.0.1:8021/';
const keys = Number(__ENV.KEYS || 100);
const batch = Number(__ENV.BATCH || 10);
const rate = Number(__ENV.RATE || 20000);

// One body per recipient key, built once: the relay reads the recipients' kids from the
// protected header, exactly as ACA-Py's packed messages carry them.
const bodies = [];
for (let i = 0; i < keys; i++) {
  const kid = 'Load' + String(i).padStart(4, '0') + 'H3C2AVvLMv6gmMNam3uVAjZpfkcJCw';
  const protectedHeader = JSON.stringify({
    enc: 'xchacha20poly1305_ietf', typ: 'JWM/1.0', alg: 'Authcrypt',
    recipients: [{ encrypted_key: 'a2V5', header: { kid: kid, sender: 'c2VuZGVy', iv: 'aXY' } }],
  });
  bodies.push(JSON.stringify({
    protected: encoding.b64encode(protectedHeader, 'url'),
    iv: 'aXY',
    ciphertext: encoding.b64encode('x'.repeat(600), 'rawurl'),
    tag: 'dGFn',
  }));
}
const params = { headers: { 'Content-Type': 'application/ssi-agent-wire' } };

export const options = {
  scenarios: {
    relay: {
      executor: 'constant-arrival-rate',
      rate: Math.max(1, Math.round(rate / batch)),
      timeUnit: '1s',
      duration: __ENV.DURATION || '10s',
      preAllocatedVUs: Number(__ENV.VUS || 32),
      maxVUs: 512,
    },
  },
  batch: batch,
  batchPerHost: batch,
  discardResponseBodies: true,
  // Tags cost k6 CPU on every sample, and k6 shares the two cores with the relay and Redis: only
  // the status is kept (about 15% less k6 CPU per request than the default set).
  systemTags: ['status'],
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  thresholds: {
    http_req_failed: ['rate==0'],
    http_req_duration: ['p(99)<10'],
  },
};

let n = 0;

// No check(): http_req_failed already counts every answer that is not 2xx, and a check costs a
// metric sample per request.
export default function () {
  const reqs = [];
  for (let i = 0; i < batch; i++) {
    reqs.push(['POST', target, bodies[(n++ * 7 + __VU) % keys], params]);
  }
  http.batch(reqs);
}
