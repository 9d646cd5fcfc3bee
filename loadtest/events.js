// k6 run -e TARGET=http://127.0.0.1:8090 -e RATE=15000 -e DURATION=10s loadtest/events.js
// POSTs single ACA-Py webhook events at `herald events`, as ACA-Py's --webhook-url sends them:
// POST {TARGET}/topic/connections/ with a connection record (a state, so each post is the webhook
// event and the record event: three lists under the default topic maps) and x-wallet-id over
// WALLETS tenants. Every answer must be 202 and the p99 at most 10 ms. `make loadtest` runs it
// through scripts/loadtest-events.sh, which counts the entries afterwards. Loopback only.
//
// As in relay.js, requests go out in groups of BATCH (http.batch) so that k6's own CPU leaves
// room for Herald and Redis on a two-core machine.
import http from 'k6/http';

const target = (__ENV.TARGET || 'http://127.0.0.1:8090').replace(/\/$/, '');
const wallets = Number(__ENV.WALLETS || 10);
const batch = Number(__ENV.BATCH || 10);
const rate = Number(__ENV.RATE || 15000);

const states = ['invitation', 'request', 'response', 'active'];
const bodies = [];
for (let i = 0; i < 40; i++) {
  bodies.push(JSON.stringify({
    state: states[i % states.length],
    rfc23_state: 'completed',
    connection_id: '3fa85f64-5717-4562-b3fc-2c963f66a' + String(100 + i),
    their_label: 'Bob',
    their_did: 'did:peer:4zQmV' + 'x'.repeat(40),
    created_at: '2026-01-01T00:00:00.000000Z',
    updated_at: '2026-01-01T00:00:01.000000Z',
    accept: 'auto',
    invitation_mode: 'once',
  }));
}

export const options = {
  scenarios: {
    events: {
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
  systemTags: ['status'],
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  thresholds: {
    http_req_failed: ['rate==0'],
    http_req_duration: ['p(99)<10'],
  },
};

// 202 is the only success.
http.setResponseCallback(http.expectedStatuses(202));

let n = 0;

export default function () {
  const reqs = [];
  for (let i = 0; i < batch; i++) {
    const k = n++ + __VU * 7;
    reqs.push(['POST', target + '/topic/connections/', bodies[k % bodies.length], {
      headers: { 'Content-Type': 'application/json', 'x-wallet-id': 'wallet-' + (k % wallets) },
    }]);
  }
  http.batch(reqs);
}
