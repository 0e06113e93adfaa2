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
