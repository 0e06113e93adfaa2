package feed

// The fleet's feed against a real redis-server: each Log+Fleet pair is a replica.

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	// The groups exist before the first event (they start at the stream's end).
	waitFor(t, "the group", func() bool { n, _ := rs.Do("EXISTS", "regcache:events:group:ci:seq"); return n == ":1" })
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
	waitFor(t, "the group", func() bool { n, _ := rs.Do("EXISTS", "regcache:events:group:ci:seq"); return n == ":1" })
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
	waitFor(t, "the group", func() bool { n, _ := rs.Do("EXISTS", "regcache:events:group:ci:seq"); return n == ":1" })
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
	waitFor(t, "the group", func() bool { n, _ := rs.Do("EXISTS", "regcache:events:group:ci:seq"); return n == ":1" })
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

// pending is how many of the group's entries wait for an acknowledgement.
func pending(rs *redistest.Server, group string) string {
	p, _ := rs.Do("EVAL", "return redis.call('XPENDING', KEYS[1], ARGV[1])[1]", "1", "regcache:events", group)
	return p
}

// A delivery that finishes after its group's Run returned (a webhook shutting down) is
// still acknowledged, so that no other replica delivers it again.
func TestFleetGroupAckAfterRun(t *testing.T) {
	rs := redistest.Start(t)
	l, f := replica(t, rs.Addr, 100)
	h := newHook(10)
	h.hold = true
	stop := run(t, f.Group("ci", time.Minute), h)
	waitFor(t, "the group", func() bool { n, _ := rs.Do("EXISTS", "regcache:events:group:ci:seq"); return n == ":1" })
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
