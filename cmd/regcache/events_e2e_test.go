package main

// The change feed: a tag that a revalidation finds pointing somewhere new is one
// tag.changed event, streamed to subscribers (Server-Sent Events, resumable with
// Last-Event-ID) and listed for scripts (?format=json); a tag seen the first time is none.

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/feed"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// subscribe opens the SSE stream (after lastID when set) and passes each event on.
func subscribe(t *testing.T, rc *harness.Instance, query, lastID string) (<-chan feed.Event, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rc.URL+"/api/v1/events"+query, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		cancel()
		t.Fatalf("events stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := make(chan feed.Event, 16)
	go func() {
		defer resp.Body.Close()
		defer close(out)
		lines := bufio.NewScanner(resp.Body)
		var id string
		for lines.Scan() {
			line := lines.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "data: "):
				var e feed.Event
				if json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &e) != nil || e.ID != id {
					t.Errorf("event %q (id line %q) is not the JSON of an event with that id", line, id)
					return
				}
				out <- e
			case strings.HasPrefix(line, "event:"):
				t.Errorf("an event: line (%q): EventSource.onmessage would not see it", line)
			}
		}
	}()
	return out, cancel
}

func nextEvent(t *testing.T, events <-chan feed.Event, what string) feed.Event {
	t.Helper()
	select {
	case e, ok := <-events:
		if !ok {
			t.Fatalf("%s: the stream ended", what)
		}
		return e
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no event within 5 s", what)
	}
	return feed.Event{}
}

func noEvent(t *testing.T, events <-chan feed.Event, what string) {
	t.Helper()
	select {
	case e, ok := <-events:
		if ok {
			t.Fatalf("%s: unexpected event %+v", what, e)
		}
	case <-time.After(300 * time.Millisecond):
	}
}

func TestEventsTagChanged(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	first := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("  tag_ttl: 200ms\n", harness.Upstream("reg.test", reg.URL)))
	const path = "/v2/reg.test/team/app/manifests/v1"
	retagAndAsk := func() registrytest.Pushed {
		p := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
		time.Sleep(250 * time.Millisecond) // past tag_ttl: the next HEAD revalidates
		if r := rc.Do(t, http.MethodHead, path); r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != p.Digest {
			t.Fatalf("HEAD after the move: %d %s", r.Status, r.Header.Get("Docker-Content-Digest"))
		}
		return p
	}

	events, stop := subscribe(t, rc, "", "")
	if r := rc.Do(t, http.MethodGet, path); r.Status != http.StatusOK {
		t.Fatalf("first GET: %d", r.Status)
	}
	noEvent(t, events, "a tag seen for the first time")

	second := retagAndAsk()
	e := nextEvent(t, events, "the move")
	if e.Type != feed.TagChanged || e.Image != "reg.test/team/app:v1" || e.Registry != "reg.test" || e.Repository != "team/app" ||
		e.Tag != "v1" || e.Digest != second.Digest || e.PreviousDigest != first.Digest || e.MediaType != second.MediaType {
		t.Fatalf("event %+v; want v1 moved from %s to %s", e, first.Digest, second.Digest)
	}
	if _, err := time.Parse(time.RFC3339, e.Time); err != nil {
		t.Fatalf("time %q: %v", e.Time, err)
	}
	stop()

	// Disconnected: the next move is kept, and resuming after the last event seen gives it,
	// and nothing more.
	third := retagAndAsk()
	resumed, stop2 := subscribe(t, rc, "", e.ID)
	if got := nextEvent(t, resumed, "resumed"); got.Digest != third.Digest || got.PreviousDigest != second.Digest {
		t.Fatalf("resumed with %+v, want the move to %s", got, third.Digest)
	}
	noEvent(t, resumed, "after the resumed event")
	stop2()

	// For scripts: the whole log, or what follows an id, with the id to go on from.
	var list struct {
		Events []feed.Event `json:"events"`
		Next   string       `json:"next"`
	}
	get := func(query string) {
		t.Helper()
		r := rc.Do(t, http.MethodGet, "/api/v1/events?format=json"+query)
		if r.Status != http.StatusOK || json.Unmarshal(r.Body, &list) != nil {
			t.Fatalf("format=json%s: %d %s", query, r.Status, r.Body)
		}
	}
	get("")
	if len(list.Events) != 2 || list.Events[1].Digest != third.Digest || list.Next != list.Events[1].ID {
		t.Fatalf("the whole log: %+v", list)
	}
	get("&since=" + e.ID)
	if len(list.Events) != 1 || list.Events[0].Digest != third.Digest {
		t.Fatalf("since the first: %+v", list)
	}
	get("&since=" + list.Next + "&image=reg.test/team/app")
	if len(list.Events) != 0 || list.Next == "" {
		t.Fatalf("since the last: %+v", list)
	}
	get("&image=reg.test/other/app&type=tag.changed")
	if len(list.Events) != 0 || list.Next == "" {
		t.Fatalf("filtered to another image: %+v", list)
	}
	get("&registry=reg.test&image=reg.test/team/app:v1")
	if len(list.Events) != 2 {
		t.Fatalf("filtered to the image: %+v", list)
	}

	// An id the log cannot resume from is a reset, and the stream goes on from now.
	reset, stop3 := subscribe(t, rc, "", "nonsense")
	if got := nextEvent(t, reset, "bad Last-Event-ID"); got.Type != feed.Reset {
		t.Fatalf("a bad Last-Event-ID got %+v, want %s", got, feed.Reset)
	}
	fourth := retagAndAsk()
	if got := nextEvent(t, reset, "after the reset"); got.Digest != fourth.Digest {
		t.Fatalf("after the reset: %+v", got)
	}

	// The streams whose clients left count until a write to them fails (the next event or
	// keep-alive): at least the open one.
	m := rc.Metrics(t)
	if m[`regcache_events_total{type="tag.changed"}`] != 3 || m["regcache_events_subscribers"] < 1 {
		t.Fatalf("metrics: %v events, %v subscribers; want 3 and at least 1", m[`regcache_events_total{type="tag.changed"}`], m["regcache_events_subscribers"])
	}

	// Shutdown does not wait for open streams.
	start := time.Now()
	rc.Stop(t)
	stop3()
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("shutdown with a stream open took %v", took)
	}
}
