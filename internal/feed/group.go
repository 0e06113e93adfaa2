package feed

// Deliveries once per fleet: a webhook reads the fleet's stream through a Redis consumer
// group of its own. Every replica runs the group's loop; Redis hands each entry to one of
// them, which acknowledges it (XACK) once its delivery is finished. An entry whose replica
// died before that is claimed (XAUTOCLAIM) by another after minIdle, so a live replica
// keeps the entries it is still delivering fresh (XCLAIM of its own, however long its
// retries take) and none is taken from it.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

const (
	// localQueue is how many events kept on this replica alone (Redis failing) wait for a
	// group's loop; past that they are dropped and counted.
	localQueue = 1024
	// groupPoll is how often a group's loop looks for entries without being woken (the
	// reader wakes it when entries arrive).
	groupPoll = time.Second
	// heartbeatChunk is how many entries one heartbeat call refreshes: each call stays
	// short (Redis runs a script alone), and far below what Lua can unpack.
	heartbeatChunk = 500
)

// Group is one webhook's consumer group on the fleet's stream (Fleet.Group).
type Group struct {
	f       *Fleet
	name    string
	minIdle time.Duration
	seqKey  string // the highest entry number handed out to the group
	wake    chan struct{}
	local   chan Event // events kept on this replica alone
	dropped atomic.Uint64

	mu       sync.Mutex
	inflight map[string]struct{} // handed to the webhook, not acknowledged yet
	acked    []string            // acknowledged, not yet XACKed
	running  bool                // Run is there to XACK them

	// Run's own state.
	cursor string // where XAUTOCLAIM goes on
	logged time.Time
	// from is where the group starts when this loop makes it: the reader's position when
	// Run started. lost is set once Redis answered NOGROUP: the group is made again at the
	// stream's start.
	from string
	lost bool
}

// groupCreateScript creates the group, with its entry counter; an existing group is left
// as it is. KEYS stream, group counter, stream counter; ARGV group, the entry to start
// after, "1" when the group was lost. A group made for the first time starts after the
// entry given (where this replica's reader was when its loop started: what was published
// since is the group's, while the history before is not). A stream that is not there, or
// that lost its group (Redis restarted empty, or evicted it), holds only entries the group
// has not delivered: the group starts at its start. Either way the counter is the number
// before the first entry the group gets (nothing before it was the group's to miss).
var groupCreateScript = redis.NewScript(`
local from = ARGV[2]
if ARGV[3] == '1' or redis.call('EXISTS', KEYS[1]) == 0 then from = '0-0' end
local r = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], from, 'MKSTREAM')
if type(r) == 'table' and r.err then
  if string.find(r.err, 'BUSYGROUP', 1, true) then return 0 end
  return r
end
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
local first = redis.call('XRANGE', KEYS[1], '(' .. from, '+', 'COUNT', 1)[1]
if first then
  for i = 1, #first[2], 2 do
    if first[2][i] == 'seq' then seq = tonumber(first[2][i + 1]) - 1 end
  end
end
redis.call('SET', KEYS[2], seq)
return 1
`)

// groupReadScript reads up to ARGV count new entries for consumer ARGV[2] of group ARGV[1]
// and, atomically with it (the replicas' reads interleave), counts the entries the group
// never got: trimmed from the stream (MAXLEN) before any replica read them, told by the
// gaps in their numbers. KEYS stream, group counter. It answers {dropped, entries}. A
// counter that is not there (evicted) or ahead of an entry's number (the stream's counter
// started again) is not known: it is taken up from that entry, with no drop counted.
var groupReadScript = redis.NewScript(`
local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
if not r then return {0, {}} end
local entries = r[1][2]
local last = tonumber(redis.call('GET', KEYS[2]) or '')
local dropped = 0
for _, e in ipairs(entries) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'seq' then
      local seq = tonumber(f[i + 1])
      if last == nil or seq <= last then last = seq - 1 end
      dropped = dropped + seq - last - 1
      last = seq
    end
  end
end
if last then redis.call('SET', KEYS[2], last) end
return {dropped, entries}
`)

// heartbeatScript resets the idle time of the entries ARGV[3..] (in stream order, at most
// heartbeatChunk) that consumer ARGV[2] of group ARGV[1] still holds (one another replica
// claimed meanwhile is left to it), so that no replica claims a delivery still in
// progress. KEYS stream. Which are still this consumer's is read from its own pending
// entries over their span, a page at a time.
var heartbeatScript = redis.NewScript(`
local want = {}
for i = 3, #ARGV do want[ARGV[i]] = true end
local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
local from = ARGV[3]
while true do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], from, ARGV[#ARGV], 500, ARGV[2])
  for _, e in ipairs(p) do
    if want[e[1]] then table.insert(claim, e[1]) end
  end
  if #p < 500 then break end
  from = '(' .. p[#p][1]
end
if #claim == 5 then return 0 end
table.insert(claim, 'JUSTID')
return #redis.call(unpack(claim))
`)

// dropConsumerScript removes consumer ARGV[2] from group ARGV[1] when it holds no entry
// (a replica's loop that ends leaves no consumer behind, whose restarts would pile them
// up); one that holds some stays for another replica to claim them from. KEYS stream.
var dropConsumerScript = redis.NewScript(`
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
`)

// Group is the consumer group name on the fleet's stream, for one webhook: Run hands it
// the fleet's events, each to one replica. minIdle is how long an entry handed out and not
// acknowledged may sit before another replica takes it over (its replica died); it must
// exceed the time a live replica takes to refresh its own (a third of minIdle).
func (f *Fleet) Group(name string, minIdle time.Duration) *Group {
	g := &Group{
		f: f, name: name, minIdle: minIdle, seqKey: f.groupPrefix + name + ":seq",
		wake: make(chan struct{}, 1), local: make(chan Event, localQueue),
		inflight: map[string]struct{}{}, cursor: "0-0",
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.groups = append(f.groups, g)
	return g
}

// Dropped counts the group's deliveries lost on this replica: entries trimmed from the
// stream before the group read them, or before a replica could take over a dead one's,
// and events kept here alone that found the group's queue full or were refused.
func (g *Group) Dropped() uint64 { return g.dropped.Load() }

// signal wakes Run.
func (g *Group) signal() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// Run hands the group's events to offer until ctx ends or the fleet closes: never more at
// once than room() says the webhook can take. offer returns false for an event it refused;
// for one it took, it calls ack exactly once: with done true when the delivery is finished
// (delivered or given up), which acknowledges the entry for the fleet, with done false
// when it let the event go unfinished (shutting down). Events this replica kept alone
// (Redis failing) come too, with an ack that does nothing. A refused or unfinished entry is
// taken over after minIdle like a dead replica's, by whichever replica claims it first.
func (g *Group) Run(ctx context.Context, room func() int, offer func(Event, func(done bool)) bool) {
	f := g.f
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.busy.Add(1)
	f.mu.Unlock()
	defer f.busy.Done()
	g.from = *f.at.Load()
	g.setRunning(true)
	defer g.leave()
	defer g.setRunning(false)
	beatEvery := min(max(g.minIdle/3, 10*time.Millisecond), 10*time.Second)
	tick := time.NewTicker(min(beatEvery, groupPoll))
	defer tick.Stop()
	var ready bool // the group exists
	var beat time.Time
	for {
		g.try(g.flushAcks())
		g.offerLocal(room, offer)
		if !ready {
			ready = g.try(g.create())
		}
		more := false
		if ready && time.Since(beat) >= beatEvery {
			beat = time.Now()
			g.try(g.heartbeat())
			ready = g.try(g.claim(room, offer))
		}
		if n := min(room(), readCount); ready && n > 0 {
			got, err := g.read(n, offer)
			ready = g.try(err)
			more = got == n
		}
		if ctx.Err() != nil || f.ctx.Err() != nil {
			return
		}
		if more {
			continue // more may be waiting
		}
		select {
		case <-ctx.Done():
			return
		case <-f.ctx.Done():
			return
		case <-g.wake:
		case <-tick.C:
		}
	}
}

// setRunning records whether Run is there to acknowledge: a delivery finished after it
// returned is acknowledged by its ack call itself.
func (g *Group) setRunning(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.running = on
}

// try logs err (once per interval) and reports whether the group may still be used: a
// group that Redis lost (NOGROUP, Redis restarted empty) is created again.
func (g *Group) try(err error) bool {
	if err == nil {
		return true
	}
	if due(&g.logged) {
		g.f.zl.Warn("change feed: a Redis call failed; webhook deliveries from the fleet's stream wait for it (logged once per 30s)",
			zap.String("group", g.name), zap.Error(err))
	}
	if strings.Contains(err.Error(), "NOGROUP") {
		g.lost = true
		return false
	}
	return true
}

func (g *Group) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), g.f.opTime)
}

func (g *Group) create() error {
	ctx, cancel := g.ctx()
	defer cancel()
	lost := "0"
	if g.lost {
		lost = "1"
	}
	return groupCreateScript.Run(ctx, g.f.rdb, []string{g.f.stream, g.seqKey, g.f.seqKey}, g.name, g.from, lost).Err()
}

// leave, as Run returns, acknowledges the finished deliveries and, with none left in
// flight, removes this replica's consumer when it holds no entry.
func (g *Group) leave() {
	if g.flushAcks() != nil {
		return
	}
	g.mu.Lock()
	busy := len(g.inflight) > 0 || len(g.acked) > 0
	g.mu.Unlock()
	if busy {
		return
	}
	ctx, cancel := g.ctx()
	defer cancel()
	_ = dropConsumerScript.Run(ctx, g.f.rdb, []string{g.f.stream}, g.name, g.f.consumer).Err()
}

// offerLocal hands on the events kept on this replica alone.
func (g *Group) offerLocal(room func() int, offer func(Event, func(bool)) bool) {
	for room() > 0 {
		select {
		case e := <-g.local:
			if !offer(e, func(bool) {}) {
				g.dropped.Add(1)
			}
		default:
			return
		}
	}
}

// read takes up to n new entries for this replica and hands them on.
func (g *Group) read(n int, offer func(Event, func(bool)) bool) (int, error) {
	ctx, cancel := g.ctx()
	defer cancel()
	res, err := groupReadScript.Run(ctx, g.f.rdb, []string{g.f.stream, g.seqKey}, g.name, g.f.consumer, n).Slice()
	if err != nil {
		return 0, err
	}
	if len(res) != 2 {
		return 0, fmt.Errorf("group read answered %d values", len(res))
	}
	if d, ok := res[0].(int64); ok && d > 0 {
		g.dropped.Add(uint64(d))
	}
	entries, _ := res[1].([]any)
	for _, raw := range entries {
		entry, _ := raw.([]any)
		if len(entry) != 2 {
			continue
		}
		id, _ := entry[0].(string)
		fields, _ := entry[1].([]any)
		var data any
		for i := 0; i+1 < len(fields); i += 2 {
			if fields[i] == "event" {
				data = fields[i+1]
			}
		}
		g.hand(id, data, offer)
	}
	return len(entries), nil
}

// hand offers one entry; one that does not decode is acknowledged, as nothing can deliver it.
func (g *Group) hand(id string, data any, offer func(Event, func(bool)) bool) {
	_, e, ok := decodeEntry(id, data)
	g.mu.Lock()
	if !ok {
		g.acked = append(g.acked, id)
		g.mu.Unlock()
		return
	}
	g.inflight[id] = struct{}{}
	g.mu.Unlock()
	var once sync.Once
	ack := func(done bool) {
		once.Do(func() {
			g.mu.Lock()
			delete(g.inflight, id)
			if !done {
				// Left pending and no longer kept fresh: another replica takes it over.
				g.mu.Unlock()
				return
			}
			g.acked = append(g.acked, id)
			running := g.running
			g.mu.Unlock()
			if running {
				g.signal()
			} else {
				_ = g.flushAcks()
			}
		})
	}
	if !offer(e, ack) {
		g.mu.Lock()
		delete(g.inflight, id)
		g.mu.Unlock()
	}
}

// flushAcks acknowledges the finished deliveries; those Redis did not take are tried
// again (and kept fresh meanwhile, so that no replica delivers them again).
func (g *Group) flushAcks() error {
	g.mu.Lock()
	ids := g.acked
	g.acked = nil
	g.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	ctx, cancel := g.ctx()
	defer cancel()
	err := g.f.rdb.XAck(ctx, g.f.stream, g.name, ids...).Err()
	if err != nil {
		g.mu.Lock()
		g.acked = append(ids, g.acked...)
		g.mu.Unlock()
	}
	return err
}

// heartbeat keeps the entries this replica holds from being claimed by another: in stream
// order, heartbeatChunk per call. It goes on past a failed call and answers the first error.
func (g *Group) heartbeat() error {
	type entry struct {
		id  eventID
		raw string
	}
	g.mu.Lock()
	held := make([]entry, 0, len(g.inflight)+len(g.acked))
	for id := range g.inflight {
		if p, ok := streamID(id); ok {
			held = append(held, entry{p, id})
		}
	}
	for _, id := range g.acked {
		if p, ok := streamID(id); ok {
			held = append(held, entry{p, id})
		}
	}
	g.mu.Unlock()
	sort.Slice(held, func(i, j int) bool { return held[i].id.less(held[j].id) })
	var first error
	for len(held) > 0 {
		chunk := held[:min(heartbeatChunk, len(held))]
		held = held[len(chunk):]
		args := make([]any, 0, 2+len(chunk))
		args = append(args, g.name, g.f.consumer)
		for _, e := range chunk {
			args = append(args, e.raw)
		}
		ctx, cancel := g.ctx()
		err := heartbeatScript.Run(ctx, g.f.rdb, []string{g.f.stream}, args...).Err()
		cancel()
		if err != nil && first == nil {
			first = err
		}
	}
	return first
}

// claim takes over the entries idle longer than minIdle (their replica died, or refused
// them), as many as the webhook has room for, and hands them on. Those trimmed from the
// stream meanwhile are lost deliveries.
func (g *Group) claim(room func() int, offer func(Event, func(bool)) bool) error {
	n := min(room(), readCount)
	if n <= 0 {
		return nil
	}
	ctx, cancel := g.ctx()
	defer cancel()
	msgs, next, deleted, err := g.f.rdb.XAutoClaimWithDeleted(ctx, &redis.XAutoClaimArgs{
		Stream: g.f.stream, Group: g.name, Consumer: g.f.consumer, MinIdle: g.minIdle, Start: g.cursor, Count: int64(n),
	}).Result()
	if err != nil {
		return err
	}
	g.cursor = next
	g.dropped.Add(uint64(len(deleted)))
	for _, m := range msgs {
		g.mu.Lock()
		_, mine := g.inflight[m.ID] // this replica's own, whose refresh failed: still in progress
		g.mu.Unlock()
		if !mine {
			g.hand(m.ID, m.Values["event"], offer)
		}
	}
	return nil
}

// consumerName names this process in the groups: host, pid and a random part, so that a
// restarted replica is a new consumer and the old one's entries are claimed as a dead one's.
func consumerName() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}
