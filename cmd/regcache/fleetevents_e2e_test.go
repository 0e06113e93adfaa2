package main

// A fleet has one change feed (docs/replicas.md): replicas sharing Redis record a tag's
// move once for the whole fleet, whichever replicas revalidate it, every replica's stream
// carries it with the same id, and a restarted replica resumes an id it never gave.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/cache/redistest"
	"regcache/internal/feed"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// eventList is ?format=json's answer.
type eventList struct {
	Events []feed.Event `json:"events"`
	Next   string       `json:"next"`
}

func listEvents(t *testing.T, rc *harness.Instance, query string) eventList {
	t.Helper()
	var l eventList
	r := rc.Do(t, http.MethodGet, "/api/v1/events?format=json"+query)
	if r.Status != http.StatusOK || json.Unmarshal(r.Body, &l) != nil {
		t.Fatalf("events%s: %d %s", query, r.Status, r.Body)
	}
	return l
}

// waitList polls rc's log until it holds n events.
func waitList(t *testing.T, rc *harness.Instance, n int, what string) []feed.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l := listEvents(t, rc, "")
		if len(l.Events) == n {
			return l.Events
		}
		if len(l.Events) > n || time.Now().After(deadline) {
			t.Fatalf("%s: %d events, want %d: %+v", what, len(l.Events), n, l.Events)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFleetEventsOneFeed(t *testing.T) {
	if redistest.Binary() == "" {
		redistest.Skip(t)
	}
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.Bearer)
	const ttl = 300 * time.Millisecond
	cfg := harness.Config("  tag_ttl: 300ms\n  redis:\n    addr: "+rs.Addr+"\n    timeout: 2s\n", harness.Upstream("reg.test", reg.URL))
	reps := []*harness.Instance{startReplica(t, cfg), startReplica(t, cfg), startReplica(t, cfg)}
	path := func(tag string) string { return "/v2/reg.test/team/app/manifests/" + tag }

	const n = 10 // the count
	var tags []string
	for i := range n {
		tag := fmt.Sprint("v", i)
		reg.PushImage(t, "team/app", tag, types.OCIManifestSchema1)
		tags = append(tags, tag)
		if r := reps[i%3].Do(t, http.MethodHead, path(tag)); r.Status != http.StatusOK {
			t.Fatalf("HEAD %s: %d", tag, r.Status)
		}
	}
	live, stop := subscribe(t, reps[2], "", "")
	defer stop()

	// Each tag moves upstream; past tag_ttl, all three replicas revalidate it at once.
	moved := map[string]string{}
	for _, tag := range tags {
		moved[tag] = reg.PushImage(t, "team/app", tag, types.OCIManifestSchema1).Digest
	}
	time.Sleep(ttl + 50*time.Millisecond)
	for _, tag := range tags {
		for _, r := range harness.Burst(reps, 6, http.MethodHead, func(int) string { return path(tag) }, "Accept", harness.AcceptAll) {
			if r.Err != nil || r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != moved[tag] {
				t.Fatalf("HEAD %s after the move: %d %v %s", tag, r.Status, r.Err, r.Header.Get("Docker-Content-Digest"))
			}
		}
	}

	var want []string
	for i, rc := range reps {
		got := waitList(t, rc, n, fmt.Sprint("replica ", i))
		seen := map[string]bool{}
		var ids []string
		for _, e := range got {
			if e.Type != feed.TagChanged || e.Digest != moved[e.Tag] || seen[e.Tag] {
				t.Fatalf("replica %d: event %+v (moves %v)", i, e, moved)
			}
			seen[e.Tag] = true
			ids = append(ids, e.ID)
		}
		if i == 0 {
			want = ids
		} else if fmt.Sprint(ids) != fmt.Sprint(want) {
			t.Fatalf("replica %d has ids %v, replica 0 %v", i, ids, want)
		}
		if m := rc.Metric(t, `regcache_events_total{type="tag.changed"}`); m != n {
			t.Fatalf("replica %d counted %v events", i, m)
		}
	}
	for _, id := range want {
		if e := nextEvent(t, live, "the live stream"); e.ID != id {
			t.Fatalf("the live stream gave %s, want %s", e.ID, id)
		}
	}
	noEvent(t, live, "after the moves")

	// A replica restarted resumes an id from before its restart: what followed, no reset,
	// no repeat, then the next move live.
	reps[1].Stop(t)
	reps[1] = startReplica(t, cfg)
	resumed, stop2 := subscribe(t, reps[1], "", want[1])
	defer stop2()
	for _, id := range want[2:] {
		if e := nextEvent(t, resumed, "resumed after a restart"); e.ID != id {
			t.Fatalf("after a restart, resuming from %s gave %+v, want %s", want[1], e, id)
		}
	}
	next := reg.PushImage(t, "team/app", tags[0], types.OCIManifestSchema1).Digest
	time.Sleep(ttl + 50*time.Millisecond)
	if r := reps[0].Do(t, http.MethodHead, path(tags[0])); r.Header.Get("Docker-Content-Digest") != next {
		t.Fatalf("HEAD after the last move: %d %s", r.Status, r.Header.Get("Docker-Content-Digest"))
	}
	last := nextEvent(t, resumed, "the move after the restart")
	if last.Digest != next || last.ID <= want[n-1] {
		t.Fatalf("after the restart: %+v", last)
	}
	noEvent(t, resumed, "after the last move")
	if e := nextEvent(t, live, "the last move, on another replica"); e.ID != last.ID {
		t.Fatalf("replica 2 streamed %s, replica 1 %s", e.ID, last.ID)
	}
	if l := listEvents(t, reps[1], "&since="+want[0]); len(l.Events) != n || l.Events[n-1].ID != last.ID {
		t.Fatalf("the restarted replica since %s: %+v", want[0], l)
	}
}
