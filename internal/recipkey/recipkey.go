// Package recipkey shares inbound work between ACA-Py instances the way the redis_events plugin
// does: each recipient key is assigned to one registered instance (round robin), the keys of an
// instance that has gone silent with messages pending move to another, and every queued message
// counts as pending for its instance. The reference does this in a dozen round trips with races
// between relays; here each message's bookkeeping is atomic, inside one server-side script call
// that messages arriving at the same moment share.
package recipkey

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
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
	c       rueidis.Client
	script  *rueidis.Lua
	stale   time.Duration
	now     func() time.Time
	cluster bool

	mu       sync.Mutex
	queue    []*call // messages waiting for the next script call
	flushing int     // callers committing batches right now
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
	cluster := c.Mode() == rueidis.ClientModeCluster
	return &Assigner{c: c, script: rueidis.NewLuaScript(s), stale: stale, now: time.Now, cluster: cluster}
}

// Assign records one message for recipKey and returns the uid of the instance that owns it.
func (a *Assigner) Assign(ctx context.Context, recipKey string) (string, error) {
	calls := [1]*call{{key: recipKey}}
	a.exec(ctx, calls[:], false)
	return calls[0].uid, calls[0].err
}

// Queue records one message for recipKey and RPUSHes entry to the list <topic>_<recipKey>, the
// list the owning instance pops. The bookkeeping comes first, as in the reference, so a message
// is never in a list that no instance owns.
//
// Concurrent calls are committed together: while one script call is in flight, the messages that
// arrive meanwhile gather and go in the next, one call for all of them. A lone message goes at
// once; under load Redis runs one script per batch instead of one per message. On a standalone
// Redis the script also pushes the entries; on a cluster the lists live on other nodes, so the
// pushes follow the script in one pipelined round. Once handed over, a message is committed or
// fails within flushTimeout whatever happens to ctx, so that an answer never contradicts Redis.
func (a *Assigner) Queue(_ context.Context, topic, recipKey string, entry []byte) error {
	c, _ := callPool.Get().(*call)
	if c == nil {
		c = &call{done: make(chan struct{}, 1)}
	}
	c.key, c.list, c.entry = recipKey, topic+"_"+recipKey, entry
	a.mu.Lock()
	a.queue = append(a.queue, c)
	lead := a.flushing < maxFlushers
	if lead {
		a.flushing++
	}
	a.mu.Unlock()
	if lead {
		a.flush(c)
	}
	if !c.finished {
		<-c.done
	}
	err := c.err
	*c = call{done: c.done}
	callPool.Put(c)
	return err
}

// maxFlushers bounds the script calls in flight at once; more callers only wait for the next.
const maxFlushers = 2

// maxBatch bounds the messages of one script call.
const maxBatch = 128

type call struct {
	key, list string
	entry     []byte
	uid       string
	err       error
	done      chan struct{} // signalled when another caller's flush committed this message
	finished  bool          // committed by its own caller's flush
}

var callPool sync.Pool

// flush commits what is queued, batch after batch. A caller flushing for its own message (own)
// stops once that message is done and leaves whatever came meanwhile to a goroutine, so that its
// request never waits for other requests' batches; that goroutine runs until the queue is empty.
func (a *Assigner) flush(own *call) {
	var batch []*call
	for {
		a.mu.Lock()
		if len(a.queue) == 0 {
			a.flushing--
			a.mu.Unlock()
			return
		}
		if own != nil && own.finished {
			a.mu.Unlock()
			go a.flush(nil)
			return
		}
		n := min(len(a.queue), maxBatch)
		batch = append(batch[:0], a.queue[:n]...)
		rest := copy(a.queue, a.queue[n:])
		clear(a.queue[rest:])
		a.queue = a.queue[:rest]
		a.mu.Unlock()

		// The batch carries other callers' messages: it is not tied to any one request.
		ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
		a.exec(ctx, batch, true)
		cancel()
		for _, c := range batch {
			if c == own {
				c.finished = true
				continue
			}
			c.done <- struct{}{}
		}
	}
}

// flushTimeout bounds one batch's Redis calls.
const flushTimeout = 10 * time.Second

// exec runs the script for calls and sets each call's uid or error; with push the entries are
// queued too.
func (a *Assigner) exec(ctx context.Context, calls []*call, push bool) {
	keys := make([]string, 1, 1+len(calls))
	keys[0] = KeyUIDMap
	args := make([]string, 0, 7+2*len(calls))
	pushFlag := "0"
	if push && !a.cluster {
		pushFlag = "1"
	}
	args = append(args, UIDKeysMap, PendingMap, LastAccessMap, RoundRobinKey,
		strconv.FormatInt(localSeconds(a.now()), 10), strconv.FormatInt(int64(a.stale/time.Second), 10), pushFlag)
	for _, c := range calls {
		if pushFlag == "1" {
			keys = append(keys, c.list)
		}
		args = append(args, c.key, rueidis.BinaryString(c.entry))
	}
	replies, err := a.script.Exec(ctx, a.c, keys, args).ToArray()
	if err == nil && len(replies) != len(calls) {
		err = fmt.Errorf("bookkeeping script answered %d results for %d messages", len(replies), len(calls))
	}
	if err != nil {
		for _, c := range calls {
			c.err = err
		}
		return
	}
	var cmds rueidis.Commands
	for i, c := range calls {
		uid, err := replies[i].ToString()
		switch {
		case rueidis.IsRedisNil(err):
			c.err = ErrNoInstance
		case err != nil:
			c.err = err
		default:
			c.uid = uid
			if push && a.cluster {
				cmds = append(cmds, a.c.B().Rpush().Key(c.list).Element(rueidis.BinaryString(c.entry)).Build())
			}
		}
	}
	if len(cmds) == 0 {
		return
	}
	// Cluster: the pushes of the messages whose bookkeeping succeeded, pipelined per node.
	results := a.c.DoMulti(ctx, cmds...)
	j := 0
	for _, c := range calls {
		if c.err == nil {
			c.err = results[j].Error()
			j++
		}
	}
}

// localSeconds reads t's local wall clock as if it were UTC: the reference stores naive local
// times, and the script compares them with this.
func localSeconds(t time.Time) int64 {
	_, off := t.Zone()
	return t.Unix() + int64(off)
}

// FormatAccess is how ACA-Py writes an instance's last access (local time, a literal Z).
func FormatAccess(t time.Time) string { return t.Format("2006-01-02T15:04:05Z") }

// assignLua is the reference's process_payload_recip_key bookkeeping, made atomic, for a batch of
// messages. KEYS: recip_key_uid_map, then the list of each message. ARGV: uid_recip_keys_map,
// pending counts, last access map, round robin key, now (local wall clock as Unix seconds), stale
// seconds, "1" to RPUSH each entry to its list after its bookkeeping (standalone) or "0" (cluster,
// where the lists live on other nodes), then recipient key and entry of each message. The reply
// holds the owning uid of each message, nil when no instance has registered.
const assignLua = `
local kmap = KEYS[1]
local ukeys, pending, access, rr = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, stale, push = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'

local alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
local values -- built on first use: most calls never decode a key list

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
  if not values then
    values = {}
    for i = 1, 64 do values[string.byte(alphabet, i)] = i - 1 end
    values[string.byte('+')] = 62
    values[string.byte('/')] = 63
  end
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

local stamps = {}

-- The owners of every key of the batch in one read; every later HSET of the map goes through
-- set_owner, so the memo stays what the map holds.
local n = (#ARGV - 7) / 2
local owner = {}
if n > 0 then
  local ks = {}
  for i = 1, n do ks[i] = ARGV[6 + 2 * i] end
  local got = redis.call('HMGET', kmap, unpack(ks))
  for i = 1, n do owner[ks[i]] = got[i] end
end
local function set_owner(k, uid)
  redis.call('HSET', kmap, k, uid)
  owner[k] = uid
end

local function assign(key)
  local uid = owner[key]
  if not uid then
    uid = next_uid(nil)
    if not uid then return false end
    set_owner(key, uid)
    add_key(uid, key)
    redis.call('HSET', pending, uid .. '_' .. key, 0)
  end

  -- The script never writes last access, so one read per instance and batch is enough.
  local t = stamps[uid]
  if t == nil then
    local seen = redis.call('HGET', access, uid)
    t = seen and stamp(seen) or false
    stamps[uid] = t
  end
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
        set_owner(k, new)
        add_key(new, k)
        if count then redis.call('HINCRBY', pending, new .. '_' .. k, tonumber(count) or 0) end
        if k == key then uid = new end
      end
      if #keys_of(old) == 0 then redis.call('HDEL', ukeys, old) end
    end
  end

  redis.call('HINCRBY', pending, uid .. '_' .. key, 1)
  return uid
end

-- One message after another, in the order given; a message whose key no instance can take
-- gets false (nil in the reply) and is not pushed.
local out = {}
for i = 1, n do
  local uid = assign(ARGV[6 + 2 * i])
  out[i] = uid
  if uid and push then redis.call('RPUSH', KEYS[1 + i], ARGV[7 + 2 * i]) end
end
return out
`
