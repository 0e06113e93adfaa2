package feed

// The fleet's feed against a real redis-server: each Log+Fleet pair is a replica.

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"regcache/cache"
	"regcache/cache/redistest"
)

// replica is one replica's feed on the Redis at addr, closed at the test's end.
func replica(t *testing.T, addr string, size int) (*Log, *Fleet) {
	t.Helper()
	l := NewLog(size)
	f := NewFleet(l, cache.RedisConfig{Addr: addr, OpTimeout: 2 * time.Second}, zaptest.NewLogger(t))
	t.Cleanup(func() { f.Close(); l.Close() })
	return l, f
}

// changed is a move of tag to digest.
func changed(tag, digest string) Event {
	return Event{Type: TagChanged, Time: "2026-12-02T17:00:00Z", Image: "reg.test/team/app:" + tag, Registry: "reg.test",
		Repository: "team/app", Tag: tag, Digest: digest}
}

// waitEvents waits until l holds n events and returns them.
func waitEvents(t *testing.T, l *Log, n int, what string) []Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := l.Since("")
		if len(got) == n {
			return got
		}
		if len(got) > n || time.Now().After(deadline) {
			t.Fatalf("%s: %d events, want %d: %+v", what, len(got), n, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ids(events []Event) []string {
	var out []string
	for _, e := range events {
		out = append(out, e.ID)
	}
	return out
}

// An event published by one replica is one event, with one id, in every replica's log,
// handed live to each replica's subscribers and listeners; two replicas publishing the
// same change make one event; a move back (A→B→A) is an event each time.
func TestFleetOneEventPerChange(t *testing.T) {
	rs := redistest.Start(t)
	var logs []*Log
	var fleets []*Fleet
	var subs []*Subscription
	var heard [3]atomic.Int64
	for i := range 3 {
		l, f := replica(t, rs.Addr, 100)
		fleets = append(fleets, f)
		l.Notify(func(Event) { heard[i].Add(1) })
		_, s := l.Subscribe("")
		subs = append(subs, s)
		logs = append(logs, l)
	}
	if e := logs[0].Publish(changed("v1", "sha256:b")); e.ID != "" {
		t.Fatalf("a fleet's Publish gave an id (%s) before Redis did", e.ID)
	}
	first := waitEvents(t, logs[0], 1, "the first move")[0]
	if _, ok := parseID(first.ID); !ok || first.Digest != "sha256:b" {
		t.Fatalf("event %+v", first)
	}
	// The same move seen by two more replicas, then a move back and forth, each seen by
	// two replicas at once.
	for _, step := range []struct {
		digest string
		from   []int
	}{{"sha256:b", []int{1, 2}}, {"sha256:a", []int{1, 2}}, {"sha256:b", []int{0, 2}}} {
		for _, i := range step.from {
			logs[i].Publish(changed("v1", step.digest))
		}
		waitFor(t, "the publishes", func() bool {
			return fleets[0].queued.Load()+fleets[1].queued.Load()+fleets[2].queued.Load() == 0
		})
	}
	logs[0].Publish(changed("v2", "sha256:b")) // another tag: its own state
	var want []string
	for i, l := range logs {
		got := waitEvents(t, l, 4, fmt.Sprint("replica ", i))
		var digests []string
		for _, e := range got {
			digests = append(digests, e.Tag+"@"+e.Digest)
		}
		if fmt.Sprint(digests) != "[v1@sha256:b v1@sha256:a v1@sha256:b v2@sha256:b]" {
			t.Fatalf("replica %d: %v", i, digests)
		}
		if i == 0 {
			want = ids(got)
		} else if fmt.Sprint(ids(got)) != fmt.Sprint(want) {
			t.Fatalf("replica %d has ids %v, replica 0 %v", i, ids(got), want)
		}
		for j := range 4 {
			if e := <-subs[i].C; e.ID != want[j] {
				t.Fatalf("replica %d's subscriber got %s as event %d, want %s", i, e.ID, j, want[j])
			}
		}
		if n := heard[i].Load(); n != 4 {
			t.Fatalf("replica %d's listener heard %d events", i, n)
		}
		if s := l.Stats(); s.Changed != 4 || s.Unshared != 0 {
			t.Fatalf("replica %d stats %+v", i, s)
		}
	}
	if n, _ := rs.Do("XLEN", "regcache:events"); n != ":4" {
		t.Fatalf("the stream holds %s entries, want 4", n)
	}
}

// Ids survive a restart: a replica started anew on the same Redis resumes from an id the
// old one gave, with no reset and no repeat, and an id older than the kept window (its
// successors trimmed from the stream) gets a reset.
func TestFleetRestartResumes(t *testing.T) {
	// Small stream nodes, so that MAXLEN ~ trims a 3-event stream (whole nodes only).
	rs := redistest.Start(t, "--stream-node-max-entries", "2")
	l, f := replica(t, rs.Addr, 3)
	for i := range 3 {
		l.Publish(changed(fmt.Sprint("t", i), "sha256:x"))
	}
	before := ids(waitEvents(t, l, 3, "before the restart"))
	f.Close()
	l.Close()

	l2, _ := replica(t, rs.Addr, 3)
	if got, reset := l2.Since(before[0]); reset || fmt.Sprint(ids(got)) != fmt.Sprint(before[1:]) {
		t.Fatalf("after a restart, since %s: %v (reset %v), want %v", before[0], ids(got), reset, before[1:])
	}
	if got, reset := l2.Since(before[2]); reset || len(got) != 0 {
		t.Fatalf("since the newest: %v %v", got, reset)
	}
	l2.Publish(changed("t9", "sha256:x"))
	var after Event
	waitFor(t, "the event after the restart", func() bool {
		got, _ := l2.Since("")
		after = got[len(got)-1]
		return after.Tag == "t9"
	})
	if after.ID <= before[2] {
		t.Fatalf("a new id %s does not sort after the old %s", after.ID, before[2])
	}
	// Push the first events out of the stream: a new replica cannot resume from them.
	for i := range 10 {
		l2.Publish(changed(fmt.Sprint("u", i), "sha256:x"))
	}
	waitEvents(t, l2, 3, "a full log")
	deadline := time.Now().Add(10 * time.Second)
	for got, _ := l2.Since(""); got[2].Tag != "u9"; got, _ = l2.Since("") {
		if time.Now().After(deadline) {
			t.Fatal("the last publish never arrived")
		}
		time.Sleep(5 * time.Millisecond)
	}
	l3, _ := replica(t, rs.Addr, 3)
	if _, reset := l3.Since(before[0]); !reset {
		t.Fatal("an id trimmed from the stream long ago resumed")
	}
	if _, reset := l3.Since(after.ID); !reset {
		t.Fatal("an id older than the new replica's window resumed")
	}
	kept, _ := l3.Since("")
	if len(kept) != 3 || kept[2].Tag != "u9" {
		t.Fatalf("the new replica loaded %+v", kept)
	}
}

// hook is a webhook with a given room, recording what it was offered.
type hook struct {
	room atomic.Int64
	mu   sync.Mutex
	got  []Event
	acks []func(bool)
	hold bool // keep the acks instead of calling them
}

func (h *hook) offer(e Event, ack func(bool)) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got = append(h.got, e)
	if h.hold {
		h.acks = append(h.acks, ack)
	} else {
		ack(true)
	}
	return true
}

func (h *hook) events() []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Event(nil), h.got...)
}

// run runs g for h until the test ends (or stop is called).
func run(t *testing.T, g *Group, h *hook) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Run(ctx, func() int { return int(h.room.Load()) }, h.offer)
	}()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func newHook(room int) *hook {
	h := &hook{}
	h.room.Store(int64(room))
	return h
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Three replicas in one group: each event is delivered by exactly one of them.
func TestFleetGroupDeliversOnce(t *testing.T) {
	rs := redistest.Start(t)
	var logs []*Log
	var hooks []*hook
	for range 3 {
		l, f := replica(t, rs.Addr, 100)
		h := newHook(4)
		run(t, f.Group("ci", time.Minute), h)
		logs = append(logs, l)
		hooks = append(hooks, h)
	}
	// The groups exist before the first event (each starts where its reader was).
	waitGroup(t, rs, "ci")
	const n = 30
	for i := range n {
		logs[i%3].Publish(changed(fmt.Sprint("t", i), "sha256:x"))
	}
	all := ids(waitEvents(t, logs[0], n, "the stream"))
	total := func() int { return len(hooks[0].events()) + len(hooks[1].events()) + len(hooks[2].events()) }
	waitFor(t, "every delivery", func() bool { return total() >= n })
	time.Sleep(200 * time.Millisecond) // a repeat would show now
	seen := map[string]int{}
	for i, h := range hooks {
		for _, e := range h.events() {
			if seen[e.ID]++; seen[e.ID] > 1 {
				t.Fatalf("event %s delivered twice (replica %d)", e.ID, i)
			}
		}
		t.Logf("replica %d delivered %d", i, len(h.events()))
	}
	delivered := make([]string, 0, len(seen))
	for id := range seen {
		delivered = append(delivered, id)
	}
	sort.Strings(delivered)
	if fmt.Sprint(delivered) != fmt.Sprint(all) {
		t.Fatalf("delivered %v, want %v", delivered, all)
	}
	waitFor(t, "every entry acknowledged", func() bool { return pending(rs, "ci") == ":0" })
}

// A replica that dies with deliveries unfinished has them taken over by another after
// minIdle; one still delivering (however long) keeps them.
func TestFleetGroupReclaimsDead(t *testing.T) {
	rs := redistest.Start(t)
	const minIdle = 300 * time.Millisecond
	la, fa := replica(t, rs.Addr, 100)
	_, fb := replica(t, rs.Addr, 100)
	slow, dead := newHook(2), newHook(2)
	slow.hold, dead.hold = true, true
	stopDead := run(t, fa.Group("ci", minIdle), dead)
	waitGroup(t, rs, "ci")
	la.Publish(changed("t1", "sha256:x"))
	la.Publish(changed("t2", "sha256:x"))
	waitFor(t, "the dead replica's deliveries", func() bool { return len(dead.events()) == 2 })
	stopDead() // it never acknowledges

	// The survivor takes both over after minIdle, and holds them past several minIdle:
	// no one takes them from it.
	survivor := newHook(10)
	survivor.hold = true
	run(t, fb.Group("ci", minIdle), survivor)
	waitFor(t, "the takeover", func() bool { return len(survivor.events()) == 2 })
	other := newHook(10)
	_, fc := replica(t, rs.Addr, 100)
	run(t, fc.Group("ci", minIdle), other)
	time.Sleep(4 * minIdle)
	if n := len(other.events()); n != 0 {
		t.Fatalf("a delivery in progress was taken over %d times", n)
	}
	survivor.mu.Lock()
	for _, ack := range survivor.acks {
		ack(true)
	}
	survivor.mu.Unlock()
	waitFor(t, "the acknowledgements", func() bool { return pending(rs, "ci") == ":0" })
	if len(other.events()) != 0 || len(survivor.events()) != 2 {
		t.Fatalf("deliveries: survivor %d, other %d", len(survivor.events()), len(other.events()))
	}
}

// Entries trimmed from the stream before the group read them are counted as dropped.
func TestFleetGroupCountsTrimmed(t *testing.T) {
	rs := redistest.Start(t, "--stream-node-max-entries", "2")
	l, f := replica(t, rs.Addr, 3)
	h := newHook(0) // a webhook with no room: it reads nothing
	g := f.Group("ci", time.Minute)
	run(t, g, h)
	waitGroup(t, rs, "ci")
	const n = 20
	for i := range n {
		l.Publish(changed(fmt.Sprint("t", i), "sha256:x"))
	}
	waitFor(t, "the last event", func() bool {
		got, _ := l.Since("")
		return len(got) == 3 && got[2].Tag == "t19"
	})
	h.room.Store(100)
	g.signal()
	waitFor(t, "every entry accounted for", func() bool { return len(h.events())+int(g.Dropped()) == n })
	if len(h.events()) == 0 || g.Dropped() == 0 {
		t.Fatalf("delivered %d, dropped %d", len(h.events()), g.Dropped())
	}
	if last := h.events()[len(h.events())-1]; last.Tag != "t19" {
		t.Fatalf("the last delivery is %+v", last)
	}
}

// Redis down: Publish does not wait for it, the event is kept on this replica (its
// streams and its webhooks get it) with an id after the last fleet id, and counted. Once
// Redis is back (empty), events are shared again.
func TestFleetRedisDown(t *testing.T) {
	rs := redistest.Start(t)
	l, f := replica(t, rs.Addr, 100)
	other, _ := replica(t, rs.Addr, 100)
	h := newHook(10)
	run(t, f.Group("ci", time.Minute), h)
	waitGroup(t, rs, "ci")
	l.Publish(changed("t1", "sha256:x"))
	shared := waitEvents(t, l, 1, "the first event")[0]
	waitFor(t, "its delivery", func() bool { return len(h.events()) == 1 })

	rs.Kill()
	start := time.Now()
	l.Publish(changed("t2", "sha256:x"))
	if took := time.Since(start); took > 50*time.Millisecond {
		t.Fatalf("Publish with Redis down took %v", took)
	}
	local := waitEvents(t, l, 2, "the event kept here")[1]
	if local.ID <= shared.ID || local.Tag != "t2" || l.Stats().Unshared != 1 {
		t.Fatalf("kept %+v after %s; stats %+v", local, shared.ID, l.Stats())
	}
	if took := time.Since(start); took > 2*time.Second+time.Second {
		t.Fatalf("the event was kept after %v, more than the op timeout", took)
	}
	waitFor(t, "the webhook's delivery of the local event", func() bool { return len(h.events()) == 2 })
	// Another replica never has it: a client bringing its id there is reset at once.
	start = time.Now()
	if got, reset := other.Since(local.ID); !reset || time.Since(start) >= catchUpWait/2 {
		t.Fatalf("another replica, since a local id: %v, reset %v after %v", got, reset, time.Since(start))
	}

	rs.Start()
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; ; i++ {
		l.Publish(changed(fmt.Sprint("b", i), "sha256:x"))
		time.Sleep(200 * time.Millisecond)
		if got, _ := other.Since(""); len(got) > 1 {
			if got[len(got)-1].Tag[0] != 'b' {
				t.Fatalf("the other replica got %+v", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("events are not shared again after Redis came back")
		}
	}
}

// A fleet whose Redis is not there at start: the log works on this replica alone, and
// the start is not held up.
func TestFleetStartsWithoutRedis(t *testing.T) {
	rs := redistest.Start(t)
	rs.Kill()
	start := time.Now()
	l, _ := replica(t, rs.Addr, 10)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("starting took %v", took)
	}
	l.Publish(changed("t1", "sha256:x"))
	got := waitEvents(t, l, 1, "the event kept here")
	if _, ok := parseID(got[0].ID); !ok || l.Stats().Unshared != 1 {
		t.Fatalf("%+v %+v", got, l.Stats())
	}
}

// groupReplica is a replica whose group "ci" (minIdle a minute) runs for a webhook with
// room for 10, once the group is made.
func groupReplica(t *testing.T, rs *redistest.Server) (*Log, *Group, *hook) {
	t.Helper()
	l, f := replica(t, rs.Addr, 100)
	h := newHook(10)
	g := f.Group("ci", time.Minute)
	run(t, g, h)
	waitGroup(t, rs, "ci")
	return l, g, h
}

// waitGroup waits until the group is made (its counter is there).
func waitGroup(t *testing.T, rs *redistest.Server, group string) {
	t.Helper()
	waitFor(t, "the group "+group, func() bool { n, _ := rs.Do("EXISTS", "regcache:events:group:"+group+":seq"); return n == ":1" })
}

// groupEval runs a script on the stream (KEYS[1]) and the group (ARGV[1]).
func groupEval(rs *redistest.Server, script, group string) string {
	n, _ := rs.Do("EVAL", script, "1", "regcache:events", group)
	return n
}

// pending is how many of the group's entries wait for an acknowledgement.
func pending(rs *redistest.Server, group string) string {
	return groupEval(rs, "return redis.call('XPENDING', KEYS[1], ARGV[1])[1]", group)
}

// consumers is how many consumers the group has.
func consumers(rs *redistest.Server, group string) string {
	return groupEval(rs, "return #redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])", group)
}

// addEntries adds n entries to the stream as publishes would (numbered from 1), at once,
// and returns their ids in the fixed-width form.
func addEntries(t *testing.T, rs *redistest.Server, n int) []string {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	defer rdb.Close()
	pipe := rdb.Pipeline()
	for i := range n {
		data, _ := json.Marshal(changed(fmt.Sprint("t", i), "sha256:x"))
		pipe.XAdd(context.Background(), &redis.XAddArgs{Stream: "regcache:events", Values: []any{"seq", i + 1, "event", data}})
	}
	cmds, err := pipe.Exec(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, n)
	for i, c := range cmds {
		p, _ := streamID(c.(*redis.StringCmd).Val())
		ids[i] = p.String()
	}
	return ids
}

// A delivery that finishes after its group's Run returned (a webhook shutting down) is
// still acknowledged, so that no other replica delivers it again.
func TestFleetGroupAckAfterRun(t *testing.T) {
	rs := redistest.Start(t)
	l, f := replica(t, rs.Addr, 100)
	h := newHook(10)
	h.hold = true
	stop := run(t, f.Group("ci", time.Minute), h)
	waitGroup(t, rs, "ci")
	l.Publish(changed("t1", "sha256:x"))
	waitFor(t, "the delivery", func() bool { return len(h.events()) == 1 })
	stop()
	if p := pending(rs, "ci"); p != ":1" {
		t.Fatalf("pending before the ack: %s", p)
	}
	h.acks[0](true)
	if p := pending(rs, "ci"); p != ":0" {
		t.Fatalf("pending after the ack: %s", p)
	}
}

// A late publish never leaves the feed's last word on an older digest: a change seen
// before the one the fleet published last (by observation time) is dropped, whatever its
// previous digest; a newer one is published, with the fleet's last digest as its previous
// when the replica that saw it missed a move. Created and deleted tags follow the same
// rule.
func TestFleetLateChangeDropped(t *testing.T) {
	rs := redistest.Start(t)
	l, f := replica(t, rs.Addr, 100)
	base := time.Now().Add(-time.Minute)
	at := func(e Event, d time.Duration) Event { e.at = base.Add(d); return e }
	move := func(prev, digest string, d time.Duration) Event {
		e := changed("v1", digest)
		e.PreviousDigest = prev
		return at(e, d)
	}
	listed := func(typ, digest string, d time.Duration) Event {
		e := changed("v2", digest)
		e.Type = typ
		return at(e, d)
	}
	for _, e := range []Event{
		move("sha256:a", "sha256:b", 1*time.Second),
		move("sha256:b", "sha256:c", 3*time.Second),
		move("sha256:a", "sha256:b", 2*time.Second),         // seen before b→c: stale
		move("sha256:a", "sha256:c", 4*time.Second),         // a repeat of c
		move("sha256:c", "sha256:b", 3500*time.Millisecond), // seen before the repeat of c: stale
		move("sha256:a", "sha256:d", 5*time.Second),         // newer; its replica missed a→b→c
		move("sha256:d", "sha256:a", 4500*time.Millisecond), // older than d: stale, though it follows d
		listed(TagCreated, "sha256:x", 1*time.Second),
		listed(TagDeleted, "sha256:x", 3*time.Second),
		listed(TagCreated, "sha256:x", 2*time.Second), // seen before the deletion: stale
		listed(TagCreated, "sha256:y", 4*time.Second),
		changed("end", "sha256:z"),
	} {
		l.Publish(e)
	}
	waitFor(t, "the publishes", func() bool { return f.queued.Load() == 0 })
	var got []string
	waitFor(t, "the last event", func() bool {
		events, _ := l.Since("")
		got = nil
		for _, e := range events {
			got = append(got, fmt.Sprintf("%s %s %s>%s", e.Type, e.Tag, e.PreviousDigest, e.Digest))
		}
		return len(events) > 0 && events[len(events)-1].Tag == "end"
	})
	want := []string{
		"tag.changed v1 sha256:a>sha256:b", "tag.changed v1 sha256:b>sha256:c", "tag.changed v1 sha256:c>sha256:d",
		"tag.created v2 >sha256:x", "tag.deleted v2 >sha256:x", "tag.created v2 >sha256:y", "tag.changed end >sha256:z",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the feed holds\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Redis restarted empty (Valkey without persistence): the first publish makes the stream
// anew without the group; the group, made again, starts at the stream's start, so the
// event that made the stream is delivered.
func TestFleetGroupAfterRedisLostTheStream(t *testing.T) {
	rs := redistest.Start(t)
	l, g, h := groupReplica(t, rs)
	l.Publish(changed("t1", "sha256:x"))
	waitFor(t, "the first delivery", func() bool { return len(h.events()) == 1 && pending(rs, "ci") == ":0" })
	h.room.Store(0) // the group's loop calls Redis no more: the publish comes first
	if _, err := rs.Do("FLUSHALL"); err != nil {
		t.Fatal(err)
	}
	l.Publish(changed("t2", "sha256:x"))
	waitEvents(t, l, 2, "the event after the flush")
	h.room.Store(10)
	g.signal()
	waitFor(t, "the delivery after the flush", func() bool { return len(h.events()) == 2 })
	if e := h.events()[1]; e.Tag != "t2" || g.Dropped() != 0 {
		t.Fatalf("delivered %+v, dropped %d", e, g.Dropped())
	}
}

// A group made for the first time starts where this replica's reader was when its loop
// started, not at the stream's end then: an event published while Redis was coming up is
// delivered. A group added to a fleet with history does not deliver that history.
func TestFleetGroupStartsWhereTheReaderWas(t *testing.T) {
	rs := redistest.Start(t)
	rs.Kill()
	_, fa := replica(t, rs.Addr, 100) // starts without Redis
	h := newHook(10)
	run(t, fa.Group("ci", time.Minute), h)
	time.Sleep(100 * time.Millisecond) // its first try to make the group failed
	rs.Start()
	lb, fb := replica(t, rs.Addr, 100) // another replica, without the webhook
	lb.Publish(changed("t1", "sha256:x"))
	waitFor(t, "the delivery of the event published as Redis came back", func() bool { return len(h.events()) == 1 })
	waitEvents(t, lb, 1, "the first event")

	late := newHook(10)
	run(t, fb.Group("cd", time.Minute), late)
	waitGroup(t, rs, "cd")
	lb.Publish(changed("t2", "sha256:x"))
	waitFor(t, "the new group's delivery", func() bool { return len(late.events()) == 1 })
	time.Sleep(100 * time.Millisecond)
	if got := late.events(); len(got) != 1 || got[0].Tag != "t2" {
		t.Fatalf("a group added later delivered %+v", got)
	}
}

// A group's counter evicted (allkeys-lru) or lost is unknown, not 0: it is taken up again
// from the next entry read, with no drop counted for the entries before it.
func TestFleetGroupCounterLost(t *testing.T) {
	rs := redistest.Start(t)
	l, g, h := groupReplica(t, rs)
	for i := range 3 {
		l.Publish(changed(fmt.Sprint("t", i), "sha256:x"))
	}
	waitFor(t, "the deliveries", func() bool { return len(h.events()) == 3 })
	if _, err := rs.Do("DEL", "regcache:events:group:ci:seq"); err != nil {
		t.Fatal(err)
	}
	l.Publish(changed("t3", "sha256:x"))
	waitFor(t, "the delivery after the counter was lost", func() bool { return len(h.events()) == 4 })
	// The stream's own counter lost too: numbers start again at 1.
	if _, err := rs.Do("DEL", "regcache:events:seq"); err != nil {
		t.Fatal(err)
	}
	l.Publish(changed("t4", "sha256:x"))
	l.Publish(changed("t5", "sha256:x"))
	waitFor(t, "the deliveries after the stream's counter was lost", func() bool { return len(h.events()) == 6 })
	if d := g.Dropped(); d != 0 {
		t.Fatalf("%d deliveries counted as dropped", d)
	}
}

// A replica with more deliveries in flight than one script call can refresh (a webhook
// with a long queue and a slow receiver) keeps them all: no other replica takes one over.
func TestFleetGroupHeartbeatManyInFlight(t *testing.T) {
	rs := redistest.Start(t)
	const n = 9000
	const minIdle = 2 * time.Second
	_, fa := replica(t, rs.Addr, n)
	_, fb := replica(t, rs.Addr, n)
	slow := newHook(n)
	slow.hold = true
	ga := fa.Group("ci", minIdle)
	run(t, ga, slow)
	waitGroup(t, rs, "ci")
	addEntries(t, rs, n)
	waitFor(t, "the slow replica's deliveries", func() bool { return len(slow.events()) == n })
	start := time.Now()
	if err := ga.heartbeat(); err != nil {
		t.Fatalf("heartbeat of %d deliveries: %v", n, err)
	}
	if took := time.Since(start); took > minIdle/3 {
		t.Fatalf("heartbeat of %d deliveries took %v", n, took)
	}
	other := newHook(n)
	run(t, fb.Group("ci", minIdle), other)
	time.Sleep(3 * minIdle)
	if got := len(other.events()); got != 0 {
		t.Fatalf("%d deliveries in progress were taken over", got)
	}
	if d := ga.Dropped(); d != 0 {
		t.Fatalf("%d counted as dropped", d)
	}
}

// A group's loop that ends with nothing pending removes its consumer, so that restarts do
// not pile up consumers; one with deliveries pending keeps it (another replica takes them
// over from it).
func TestFleetGroupRemovesIdleConsumer(t *testing.T) {
	rs := redistest.Start(t)
	l, f := replica(t, rs.Addr, 100)
	h := newHook(10)
	stop := run(t, f.Group("ci", time.Minute), h)
	waitGroup(t, rs, "ci")
	l.Publish(changed("t1", "sha256:x"))
	waitFor(t, "the delivery", func() bool { return len(h.events()) == 1 && pending(rs, "ci") == ":0" })
	if n := consumers(rs, "ci"); n != ":1" {
		t.Fatalf("%s consumers while running", n)
	}
	stop()
	if n := consumers(rs, "ci"); n != ":0" {
		t.Fatalf("%s consumers after the loop ended with nothing pending", n)
	}

	_, f2 := replica(t, rs.Addr, 100)
	held := newHook(10)
	held.hold = true
	stop = run(t, f2.Group("ci", time.Minute), held)
	l.Publish(changed("t2", "sha256:x"))
	waitFor(t, "the held delivery", func() bool { return len(held.events()) == 1 })
	stop()
	if n := consumers(rs, "ci"); n != ":1" {
		t.Fatalf("%s consumers after the loop ended with a delivery pending", n)
	}
}

// A history longer than one page of the load is read whole, a page at a time, with the
// entry before it as the floor.
func TestFleetLoadsHistoryInPages(t *testing.T) {
	rs := redistest.Start(t)
	const size, n = 2*loadPage + 500, 2*loadPage + 600
	entries := addEntries(t, rs, n)
	entry := func(i int) string { return entries[i] }
	l, _ := replica(t, rs.Addr, size)
	got, _ := l.Since("")
	if len(got) != size || got[0].ID != entry(n-size) || got[size-1].ID != entry(n-1) {
		t.Fatalf("loaded %d events", len(got))
	}
	if got, reset := l.Since(entry(n - size - 1)); reset || len(got) != size {
		t.Fatalf("since the entry before the history: %d events, reset %v", len(got), reset)
	}
	if _, reset := l.Since(entry(n - size - 2)); !reset {
		t.Fatal("an id older than the history resumed")
	}
}
