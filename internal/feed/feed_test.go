package feed

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"regcache/cache"
	"regcache/upstream"
)

func move(i int) cache.TagMove {
	d := func(s string) upstream.Descriptor {
		return upstream.Descriptor{Digest: digest.FromString(s), MediaType: "application/vnd.oci.image.index.v1+json"}
	}
	return cache.TagMove{Upstream: "lscr.io", Repository: "linuxserver/nginx", Tag: fmt.Sprint("t", i),
		From: d(fmt.Sprint("old", i)), To: d(fmt.Sprint("new", i)), At: time.Date(2026, 12, 2, 17, 0, 0, 0, time.UTC)}
}

func TestRecordMoveFields(t *testing.T) {
	l := NewLog(10)
	l.RecordMove(move(1))
	got, reset := l.Since("")
	if reset || len(got) != 1 {
		t.Fatalf("%v %v", got, reset)
	}
	e := got[0]
	if e.Type != TagChanged || e.Image != "lscr.io/linuxserver/nginx:t1" || e.Registry != "lscr.io" || e.Repository != "linuxserver/nginx" ||
		e.Tag != "t1" || e.Digest != string(digest.FromString("new1")) || e.PreviousDigest != string(digest.FromString("old1")) ||
		e.Time != "2026-12-02T17:00:00Z" || e.MediaType == "" || e.ID == "" {
		t.Fatalf("event %+v", e)
	}
}

// Resuming after an id gives exactly the events after it; an id the log no longer holds
// the successors of, a malformed one or one from another process start is a reset.
func TestSinceResumesOrResets(t *testing.T) {
	l := NewLog(5)
	var ids []string
	for i := range 8 {
		ids = append(ids, l.Publish(Event{Type: TagChanged, Tag: fmt.Sprint(i)}).ID)
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("ids do not increase: %s then %s", ids[i-1], ids[i])
		}
	}
	got, reset := l.Since(ids[4]) // kept: 3..7
	if reset || len(got) != 3 || got[0].ID != ids[5] || got[2].ID != ids[7] {
		t.Fatalf("after %s: %v %v", ids[4], got, reset)
	}
	if got, reset := l.Since(ids[2]); reset || len(got) != 5 {
		t.Fatalf("after the event just before the oldest kept: %d events, reset %v", len(got), reset)
	}
	if got, reset := l.Since(ids[7]); reset || len(got) != 0 {
		t.Fatalf("after the newest: %v %v", got, reset)
	}
	for _, id := range []string{ids[1], "garbage", "0000000000001-000000000003", ids[7] + "0"} {
		if _, reset := l.Since(id); !reset {
			t.Fatalf("%q: no reset", id)
		}
	}
	first, s := l.Subscribe("garbage")
	defer s.Cancel()
	if len(first) != 1 || first[0].Type != Reset || first[0].ID != ids[7] {
		t.Fatalf("subscribing from a bad id: %v", first)
	}
}

// A subscriber that stops reading never slows Publish nor the others: it is dropped (its
// channel closed) once its buffer is full, and the others get every event.
func TestStalledSubscriberDropped(t *testing.T) {
	l := NewLog(100)
	_, stalled := l.Subscribe("")
	_, live := l.Subscribe("")
	var seen atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range live.C {
			seen.Add(1)
		}
	}()
	const n = subscriberBuffer * 4
	start := time.Now()
	for i := range n {
		l.Publish(Event{Type: TagChanged, Tag: fmt.Sprint(i)})
		if i%(subscriberBuffer/2) == 0 {
			// A reading client keeps up: wait for it, a chunk at a time.
			for seen.Load() < int64(i+1) && time.Since(start) < 10*time.Second {
				time.Sleep(time.Millisecond)
			}
		}
	}
	drained := 0
	for range stalled.C {
		drained++
	}
	if drained != subscriberBuffer {
		t.Fatalf("the stalled subscriber held %d events before it was dropped, want %d", drained, subscriberBuffer)
	}
	l.Close()
	<-done
	if m := seen.Load(); m != n {
		t.Fatalf("the live subscriber got %d of %d events", m, n)
	}
	if n := l.Stats().Subscribers; n != 0 {
		t.Fatalf("%d subscribers after Close", n)
	}
}

// An index whose body regcache holds names its platforms; attestation entries (platform
// unknown/unknown) and anything that is not an index name none.
func TestRecordMovePlatforms(t *testing.T) {
	l := NewLog(10)
	m := move(1)
	m.Body = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
		{"digest":"sha256:aaa","platform":{"os":"linux","architecture":"amd64"}},
		{"digest":"sha256:bbb","platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
		{"digest":"sha256:ccc","platform":{"os":"unknown","architecture":"unknown"}}]}`)
	l.RecordMove(m)
	m.To.MediaType = "application/vnd.oci.image.manifest.v1+json"
	l.RecordMove(m)
	m = move(2)
	l.RecordMove(m) // an index not held
	got, _ := l.Since("")
	want := map[string]string{"linux/amd64": "sha256:aaa", "linux/arm64/v8": "sha256:bbb"}
	if fmt.Sprint(got[0].Platforms) != fmt.Sprint(want) {
		t.Fatalf("platforms %v, want %v", got[0].Platforms, want)
	}
	if got[1].Platforms != nil || got[2].Platforms != nil {
		t.Fatalf("platforms for a manifest (%v) or an index not held (%v)", got[1].Platforms, got[2].Platforms)
	}
}

// id is the fixed-width id of (ms, seq).
func id(ms, seq uint64) string { return eventID{ms, seq}.String() }

// With ids that are not contiguous (a fleet's stream ids), resuming after any id gives the
// kept events after it, found by binary search on a ring that has wrapped: checked
// against a plain scan at every rotation of the ring.
func TestSinceNonContiguousIDs(t *testing.T) {
	all := []eventID{{1000, 0}, {1000, 5}, {1003, 0}, {2000, 7}, {2000, 8}, {2500, 1}, {2500, 2}, {9000, 0}, {9001, 3}}
	for n := 4; n <= len(all); n++ { // n events through a ring of 4: every wrap position
		l := NewLog(4)
		l.load(nil, eventID{999, 0})
		for _, k := range all[:n] {
			l.addShared(k, Event{Type: TagChanged, Tag: k.String()})
		}
		keptFrom := n - 4
		floor := eventID{999, 0}
		if keptFrom > 0 {
			floor = all[keptFrom-1] // the newest evicted
		}
		// Every id from just below the floor to just past the newest.
		var probes []eventID
		for _, k := range append([]eventID{floor}, all[:n]...) {
			probes = append(probes, k.prev(), k, k.next())
		}
		for _, p := range probes {
			got, reset := l.Since(p.String())
			wantReset := p.less(floor) || all[n-1].less(p)
			if reset != wantReset {
				t.Fatalf("%d events, since %s: reset %v, want %v (floor %s)", n, p, reset, wantReset, floor)
			}
			if reset {
				continue
			}
			var want []string
			for _, k := range all[keptFrom:n] {
				if p.less(k) {
					want = append(want, k.String())
				}
			}
			var ids []string
			for _, e := range got {
				ids = append(ids, e.ID)
				if e.Tag != e.ID {
					t.Fatalf("event %s carries %s", e.ID, e.Tag)
				}
			}
			if fmt.Sprint(ids) != fmt.Sprint(want) {
				t.Fatalf("%d events, since %s: %v, want %v", n, p, ids, want)
			}
		}
		if last := l.Last(); last != all[n-1].String() {
			t.Fatalf("Last %s, want %s", last, all[n-1])
		}
	}
}

// A log started from a fleet's history resumes from any id not older than its floor; a
// raised floor (entries trimmed before this replica read them) resets the ids below it.
func TestLoadAndRaiseFloor(t *testing.T) {
	l := NewLog(10)
	l.load([]kept{{eventID{5000, 0}, Event{Type: TagChanged, ID: id(5000, 0)}}, {eventID{6000, 2}, Event{Type: TagCreated, ID: id(6000, 2)}}}, eventID{4000, 9})
	if got, reset := l.Since(id(4000, 9)); reset || len(got) != 2 {
		t.Fatalf("since the floor: %v %v", got, reset)
	}
	if _, reset := l.Since(id(4000, 8)); !reset {
		t.Fatal("an id below the floor resumed")
	}
	if s := l.Stats(); s.Changed != 0 || s.Created != 0 {
		t.Fatalf("history counted as new events: %+v", s)
	}
	l.raiseFloor(eventID{6999, 0})
	l.addShared(eventID{7000, 0}, Event{Type: TagDeleted, ID: id(7000, 0)})
	if _, reset := l.Since(id(6000, 2)); !reset {
		t.Fatal("an id from before a gap resumed")
	}
	if got, reset := l.Since(id(6999, 0)); reset || len(got) != 1 || got[0].ID != id(7000, 0) {
		t.Fatalf("since the raised floor: %v %v", got, reset)
	}
	if s := l.Stats(); s.Deleted != 1 {
		t.Fatalf("stats %+v", s)
	}
	// Reset's id is the newest: resuming from it gives what follows.
	first, s := l.Subscribe("garbage")
	s.Cancel()
	if len(first) != 1 || first[0].Type != Reset || first[0].ID != id(7000, 0) {
		t.Fatalf("reset %+v", first)
	}
}

// An event kept here alone (Redis failing) takes an id after the newest; a fleet event
// that then arrives with a smaller id is still handed to subscribers, and every resumer
// from before it gets a reset rather than a silent gap.
func TestLocalThenOlderFleetEvent(t *testing.T) {
	l := NewLog(10)
	l.load([]kept{{eventID{5000, 0}, Event{Type: TagChanged, ID: id(5000, 0)}}}, eventID{4000, 0})
	local := l.keepLocal(Event{Type: TagChanged}, true)
	if p, _ := parseID(local.ID); p.ms != 5000 || p.seq < localBase || l.Stats().Unshared != 1 {
		t.Fatalf("local id %s, stats %+v", local.ID, l.Stats())
	}
	_, sub := l.Subscribe("")
	defer sub.Cancel()
	l.addShared(eventID{5000, 1}, Event{Type: TagChanged, ID: id(5000, 1), Tag: "fleet"})
	if e := <-sub.C; e.Tag != "fleet" {
		t.Fatalf("live: %+v", e)
	}
	for _, from := range []string{id(5000, 0), local.ID} {
		if _, reset := l.Since(from); !reset {
			t.Fatalf("resuming from %s did not reset", from)
		}
	}
	next := l.Last()
	l.addShared(eventID{5001, 0}, Event{Type: TagChanged, ID: id(5001, 0)})
	if got, reset := l.Since(next); reset || len(got) != 1 || got[0].ID != id(5001, 0) {
		t.Fatalf("from the reset id %s: %v %v", next, got, reset)
	}
}

// With a fleet, an id this replica's reader has not reached yet (a client moving from
// another replica) waits for it, up to catchUpWait, rather than reset at once.
func TestResumeWaitsForTheReader(t *testing.T) {
	l := NewLog(10)
	l.load(nil, eventID{4000, 0})
	l.fleet.Store(&Fleet{}) // attached: nothing is published in this test
	go func() {
		time.Sleep(50 * time.Millisecond)
		l.addShared(eventID{5000, 0}, Event{Type: TagChanged})
		l.addShared(eventID{5000, 1}, Event{Type: TagChanged})
	}()
	got, reset := l.Since(id(5000, 0))
	if reset || len(got) > 1 {
		t.Fatalf("an id the reader reached 50 ms later: %v %v", got, reset)
	}
	start := time.Now()
	if _, reset := l.Since(id(9000, 0)); !reset || time.Since(start) < catchUpWait {
		t.Fatalf("an id never reached: reset %v after %v", reset, time.Since(start))
	}
}

// Evicting the oldest kept event never lowers a floor raised past it: entries trimmed
// from the fleet's stream before this replica read them (raiseFloor), or a fleet event
// older than one kept here alone, stay a reset for a resumer from before them.
func TestEvictionNeverLowersFloor(t *testing.T) {
	l := NewLog(3)
	l.load(nil, eventID{999, 0})
	for _, ms := range []uint64{1000, 2000, 3000} {
		l.addShared(eventID{ms, 0}, Event{Type: TagChanged})
	}
	// Entries 4000..5000 were trimmed before this replica read them; 6000 comes next.
	l.raiseFloor(eventID{5999, maxSeq})
	l.addShared(eventID{6000, 0}, Event{Type: TagChanged}) // evicts 1000
	if got, reset := l.Since(id(3000, 0)); !reset {
		t.Fatalf("resuming from before the trimmed entries gave %v without a reset", ids(got))
	}
	// The fallback path: a fleet event that sorts before one kept here alone raises the
	// floor past everything; the next evictions must keep it there.
	l.keepLocal(Event{Type: TagChanged}, true)
	l.addShared(eventID{6000, 1}, Event{Type: TagChanged})
	floor, _ := l.bounds()
	for _, ms := range []uint64{7000, 8000} {
		l.addShared(eventID{ms, 0}, Event{Type: TagChanged})
	}
	if got, _ := l.bounds(); got.less(floor) {
		t.Fatalf("the floor went down from %s to %s", floor, got)
	}
	if got, reset := l.Since(id(6000, 0)); !reset {
		t.Fatalf("resuming from before the fleet event not kept gave %v without a reset", ids(got))
	}
}

// Ids of events kept here alone (Redis failing) are in a range of sequences no stream
// entry reaches, with a part that is this log's own: another replica, whose fleet events
// may have any stream id, answers one with a reset at once (it could never hand on the
// event, and its reader will never reach the id), while this log resumes from it.
func TestLocalIDsAreTheirLogs(t *testing.T) {
	history := []kept{{eventID{5000, 0}, Event{Type: TagChanged, ID: id(5000, 0)}}}
	a, b := NewLog(10), NewLog(10)
	a.load(history, eventID{4000, 0})
	b.load(history, eventID{4000, 0})
	b.fleet.Store(&Fleet{}) // attached: a resumer's id may be one its reader has yet to reach
	local := a.keepLocal(Event{Type: TagChanged, Tag: "local"}, true)
	p, _ := parseID(local.ID)
	if p.seq < localBase {
		t.Fatalf("local id %s is in the range of stream ids", local.ID)
	}
	// B's reader gets the fleet's next entry, whatever its id.
	b.addShared(eventID{5000, 1}, Event{Type: TagChanged, Tag: "fleet"})
	start := time.Now()
	if got, reset := b.Since(local.ID); !reset {
		t.Fatalf("another replica resumed from a local id with %v", ids(got))
	}
	if took := time.Since(start); took >= catchUpWait/2 {
		t.Fatalf("another replica's local id was reset after %v, not at once", took)
	}
	if got, reset := a.Since(local.ID); reset || len(got) != 0 {
		t.Fatalf("the replica that gave a local id: %v %v", got, reset)
	}
	if got, reset := a.Since(id(5000, 0)); reset || len(got) != 1 || got[0].Tag != "local" {
		t.Fatalf("since the fleet event before the local one: %v %v", got, reset)
	}
	// A second local event follows the first in the same range.
	second := a.keepLocal(Event{Type: TagChanged}, true)
	if q, _ := parseID(second.ID); !p.less(q) || q.seq < localBase {
		t.Fatalf("second local id %s after %s", second.ID, local.ID)
	}
}

// Subscribe tells where its subscription starts: a subscriber with no id that keeps it
// resumes after the events it was handed, so nothing published while it was away is lost;
// with an empty log it resumes from the start.
func TestSubscribeStart(t *testing.T) {
	l := NewLog(10)
	_, s := l.Subscribe("")
	s.Cancel()
	e := l.Publish(Event{Type: TagChanged, Tag: "a"})
	if got, reset := l.Since(s.Start); s.Start == "" || reset || len(got) != 1 || got[0].ID != e.ID {
		t.Fatalf("from an empty log's start %q: %v %v", s.Start, got, reset)
	}
	_, s = l.Subscribe("")
	s.Cancel()
	if s.Start != e.ID {
		t.Fatalf("start %q, want the newest %q", s.Start, e.ID)
	}
	f := l.Publish(Event{Type: TagChanged, Tag: "b"})
	if got, reset := l.Since(s.Start); reset || len(got) != 1 || got[0].ID != f.ID {
		t.Fatalf("from %q: %v %v", s.Start, got, reset)
	}
}

// Newest is the last n events, newest first, from a ring that has wrapped too.
func TestNewest(t *testing.T) {
	l := NewLog(4)
	if got := l.Newest(3); len(got) != 0 {
		t.Fatalf("empty log: %v", got)
	}
	for i := range 6 {
		l.RecordMove(move(i))
	}
	got := l.Newest(3)
	if len(got) != 3 || got[0].Tag != "t5" || got[1].Tag != "t4" || got[2].Tag != "t3" {
		t.Fatalf("Newest(3) = %v; want t5, t4, t3", got)
	}
	if got := l.Newest(10); len(got) != 4 || got[3].Tag != "t2" {
		t.Fatalf("Newest(10) of 4 kept = %v; want t5 down to t2", got)
	}
}
