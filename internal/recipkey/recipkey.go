// Package recipkey shares inbound work between ACA-Py instances the way the redis_events plugin
// does: each recipient key is assigned to one registered instance (round robin), the keys of an
// instance that has gone silent with messages pending move to another, and every queued message
// counts as pending for its instance. The reference does this in a dozen round trips with races
// between relays; here it is one server-side script per message.
package recipkey

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// The reference's key names. ACA-Py instances read and write them under these names, so they
// cannot carry a hash tag.
const (
	KeyUIDMap     = "recip_key_uid_map"               // recipient key -> instance uid
	UIDKeysMap    = "uid_recip_keys_map"              // uid -> base64url(JSON list of recipient keys)
	PendingMap    = "uid_recip_key_pending_msg_count" // "<uid>_<recipient key>" -> messages not yet popped
	LastAccessMap = "uid_last_access_map"             // uid -> local time of its last pop, %Y-%m-%dT%H:%M:%SZ
	RoundRobinKey = "round_robin_iterator"            // index of the next uid to assign
)

// Keys lists the bookkeeping keys, for cluster placement checks.
var Keys = []string{KeyUIDMap, UIDKeysMap, PendingMap, LastAccessMap, RoundRobinKey}

// DefaultStale is the reference's silence after which an instance's keys may move.
const DefaultStale = 15 * time.Second

// ErrNoInstance is returned when no ACA-Py instance has registered: nobody would read the message.
var ErrNoInstance = errors.New("no ACA-Py instance has registered in " + UIDKeysMap + " (is ACA-Py running with the redis_queue inbound transport?)")

// Assigner runs the bookkeeping.
type Assigner struct {
	c      rueidis.Client
	script *rueidis.Lua
	stale  time.Duration
	now    func() time.Time
}

// New returns an Assigner. On a Redis Cluster the five bookkeeping keys must be served by one
// node (see Placement); the script then runs there with the allow-cross-slot-keys flag.
func New(c rueidis.Client, stale time.Duration) *Assigner {
	if stale <= 0 {
		stale = DefaultStale
	}
	s := assignLua
	if c.Mode() == rueidis.ClientModeCluster {
		s = "#!lua flags=allow-cross-slot-keys\n" + s
	}
	return &Assigner{c: c, script: rueidis.NewLuaScript(s), stale: stale, now: time.Now}
}

// Assign records one message for recipKey and returns the uid of the instance that owns it.
func (a *Assigner) Assign(ctx context.Context, recipKey string) (string, error) {
	uid, err := a.script.Exec(ctx, a.c, []string{KeyUIDMap}, []string{
		UIDKeysMap, PendingMap, LastAccessMap, RoundRobinKey, recipKey,
		strconv.FormatInt(localSeconds(a.now()), 10), strconv.FormatInt(int64(a.stale/time.Second), 10),
	}).ToString()
	if err != nil && strings.Contains(err.Error(), "NOINSTANCE") {
		return "", ErrNoInstance
	}
	return uid, err
}

// Queue records one message for recipKey and RPUSHes entry to the list <topic>_<recipKey>, the
// list the owning instance pops. The bookkeeping comes first, as in the reference, so a message
// is never in a list that no instance owns.
func (a *Assigner) Queue(ctx context.Context, topic, recipKey string, entry []byte) error {
	if _, err := a.Assign(ctx, recipKey); err != nil {
		return err
	}
	return a.c.Do(ctx, a.c.B().Rpush().Key(topic+"_"+recipKey).Element(rueidis.BinaryString(entry)).Build()).Error()
}

// localSeconds reads t's local wall clock as if it were UTC: the reference stores naive local
// times, and the script compares them with this.
func localSeconds(t time.Time) int64 {
	_, off := t.Zone()
	return t.Unix() + int64(off)
}

// FormatAccess is how ACA-Py writes an instance's last access (local time, a literal Z).
func FormatAccess(t time.Time) string { return t.Format("2006-01-02T15:04:05Z") }

// assignLua is the reference's process_payload_recip_key bookkeeping, made atomic.
// KEYS: recip_key_uid_map. ARGV: uid_recip_keys_map, pending counts, last access map, round robin
// key, recipient key, now (local wall clock as Unix seconds), stale seconds.
const assignLua = `
local kmap = KEYS[1]
local ukeys, pending, access, rr = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key, now, stale = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])

local alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
local values = {}
for i = 1, 64 do values[string.byte(alphabet, i)] = i - 1 end
values[string.byte('+')] = 62
values[string.byte('/')] = 63

local function b64enc(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = string.byte(s, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {}
    for j = 3, 0, -1 do
      local v = math.floor(n / 64 ^ j) % 64
      q[#q + 1] = string.sub(alphabet, v + 1, v + 1)
    end
    if not b then q[3], q[4] = '=', '=' elseif not c then q[4] = '=' end
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end

local function b64dec(s)
  local out, n, bits = {}, 0, 0
  for i = 1, #s do
    local v = values[string.byte(s, i)]
    if v then
      n = n * 64 + v
      bits = bits + 6
      if bits >= 8 then
        bits = bits - 8
        local byte = math.floor(n / 2 ^ bits)
        out[#out + 1] = string.char(byte)
        n = n - byte * 2 ^ bits
      end
    end
  end
  return table.concat(out)
end

local function keys_of(uid)
  local v = redis.call('HGET', ukeys, uid)
  if not v then return {} end
  local ok, list = pcall(cjson.decode, b64dec(v))
  if not ok or type(list) ~= 'table' then return {} end
  return list
end

local function set_keys(uid, list)
  local parts = {}
  for i, k in ipairs(list) do parts[i] = cjson.encode(k) end
  redis.call('HSET', ukeys, uid, b64enc('[' .. table.concat(parts, ', ') .. ']'))
end

local function next_uid(ignore)
  local uids = redis.call('HKEYS', ukeys)
  if ignore and #uids > 1 then
    for i, u in ipairs(uids) do
      if u == ignore then table.remove(uids, i) break end
    end
  end
  if #uids == 0 then return nil end
  local it = tonumber(redis.call('GET', rr) or '0') or 0
  local uid = uids[it + 1] or uids[1]
  it = it + 1
  if it >= #uids then it = 0 end
  redis.call('SET', rr, it)
  return uid
end

local function add_key(uid, k)
  local list = keys_of(uid)
  for _, x in ipairs(list) do
    if x == k then return end
  end
  list[#list + 1] = k
  set_keys(uid, list)
end

local function stamp(s)
  local y, mo, d, h, mi, se = string.match(s, '^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)Z$')
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return (era * 146097 + doe - 719468) * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(se)
end

local uid = redis.call('HGET', kmap, key)
if not uid then
  uid = next_uid(nil)
  if not uid then return redis.error_reply('NOINSTANCE no ACA-Py instance has registered') end
  redis.call('HSET', kmap, key, uid)
  add_key(uid, key)
  redis.call('HSET', pending, uid .. '_' .. key, 0)
end

local seen = redis.call('HGET', access, uid)
local t = seen and stamp(seen)
if not t or now - t >= stale then
  local old = uid
  local list = keys_of(old)
  local busy = false
  for _, k in ipairs(list) do
    local n = tonumber(redis.call('HGET', pending, old .. '_' .. k) or '')
    if n and n >= 1 then busy = true break end
  end
  if busy then
    for _, k in ipairs(list) do
      local new = next_uid(old)
      local rest = {}
      for _, x in ipairs(keys_of(old)) do
        if x ~= k then rest[#rest + 1] = x end
      end
      set_keys(old, rest)
      local count = redis.call('HGET', pending, old .. '_' .. k)
      redis.call('HDEL', pending, old .. '_' .. k)
      redis.call('HSET', kmap, k, new)
      add_key(new, k)
      if count then redis.call('HINCRBY', pending, new .. '_' .. k, tonumber(count) or 0) end
      if k == key then uid = new end
    end
    if #keys_of(old) == 0 then redis.call('HDEL', ukeys, old) end
  end
end

redis.call('HINCRBY', pending, uid .. '_' .. key, 1)
return uid
`
