package redisq

import (
	"crypto/sha1"
	"encoding/hex"

	"github.com/redis/rueidis"
)

// Every script touches only the keys it is given, all in one slot, so it runs unchanged on a
// cluster. They are loaded once and called by SHA (rueidis falls back to EVAL after a restart).

// takeScript renews the lease and moves up to ARGV[1] entries from the queue's head into the
// in-flight hash under consecutive sequence numbers from ARGV[4], in one step: an entry is always
// in exactly one of the two. A hash rather than a list makes acknowledging an entry an HDEL of
// its number: O(1) in Redis, a few bytes on the wire, whatever the entry's size.
// KEYS: queue, inflight, leases. ARGV: n, instance, lease expiry (ms), first sequence number.
var takeScript = rueidis.NewLuaScript(takeLua)

// takeSHA names takeScript for EVALSHA in a hand-built pipeline.
var takeSHA = func() string { h := sha1.Sum([]byte(takeLua)); return hex.EncodeToString(h[:]) }()

const takeLua = `
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
local items = redis.call('LPOP', KEYS[1], ARGV[1])
if not items then return {} end
local seq = tonumber(ARGV[4])
local kv = {}
for i = 1, #items do
  kv[2 * i - 1] = seq + i - 1
  kv[2 * i] = items[i]
end
redis.call('HSET', KEYS[2], unpack(kv))
return items
`

// releaseScript puts entries that were taken but never started back at the queue's head, in their
// original order. An entry no longer in flight (already reaped) is not pushed twice.
// KEYS: queue, inflight. ARGV: the entries' sequence numbers, oldest first.
var releaseScript = rueidis.NewLuaScript(`
local n = 0
for i = #ARGV, 1, -1 do
  local v = redis.call('HGET', KEYS[2], ARGV[i])
  if v then
    redis.call('HDEL', KEYS[2], ARGV[i])
    redis.call('LPUSH', KEYS[1], v)
    n = n + 1
  end
end
return n
`)

// reapScript returns the whole in-flight hash of an instance whose lease has expired to the
// queue's head, oldest first, and forgets the instance. ARGV[3] = "force" skips the expiry check
// (an instance giving back its own). Returns -1 when the lease is still alive.
// KEYS: queue, inflight, leases. ARGV: instance, now (ms), force.
var reapScript = rueidis.NewLuaScript(`
local exp = redis.call('ZSCORE', KEYS[3], ARGV[1])
if ARGV[3] ~= 'force' and exp and tonumber(exp) > tonumber(ARGV[2]) then return -1 end
local seqs = redis.call('HKEYS', KEYS[2])
local nums = {}
for i = 1, #seqs do nums[i] = tonumber(seqs[i]) end
table.sort(nums)
for i = #nums, 1, -1 do
  redis.call('LPUSH', KEYS[1], redis.call('HGET', KEYS[2], string.format('%d', nums[i])))
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return #nums
`)

// deadScript dead-letters an in-flight entry in one step.
// KEYS: dead list, inflight. ARGV: dead-letter entry, sequence number.
var deadScript = rueidis.NewLuaScript(`
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
`)

// stageScript takes the due members of the retry set into this instance's staging list in one
// step, renewing the pump lease. Taking with ZREM inside the script means a reference deliverer's
// ZREM of the same member returns 0 and it skips it: each member is pushed back by one pump only.
// KEYS: retry set, staging, pump leases. ARGV: now (s), limit, instance, lease expiry (ms).
var stageScript = rueidis.NewLuaScript(`
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due == 0 then return 0 end
redis.call('ZREM', KEYS[1], unpack(due))
redis.call('RPUSH', KEYS[2], unpack(due))
return #due
`)

// claimScript moves the staging list of a pump whose lease expired onto this instance's staging
// list, so that exactly one live pump finishes pushing it.
// KEYS: dead staging, own staging, pump leases. ARGV: dead instance, now (ms).
var claimScript = rueidis.NewLuaScript(`
local exp = redis.call('ZSCORE', KEYS[3], ARGV[1])
if exp and tonumber(exp) > tonumber(ARGV[2]) then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end
redis.call('ZREM', KEYS[3], ARGV[1])
return n
`)
