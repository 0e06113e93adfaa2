package cache

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/upstream/registrytest"
)

// OnTagMove hears of a tag that upstream's answer shows pointing somewhere new, once, with
// the new manifest's body when the cache holds it; a tag seen the first time, or found
// unchanged, is no move.
func TestTagMoveReported(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	first := reg.PushIndex(t, "team/app", "v1", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	var mu sync.Mutex
	var moves []TagMove
	const ttl = 200 * time.Millisecond
	c, o := newLocal(t, reg, Config{MaxStale: time.Hour, RevalidateWait: 2 * time.Second,
		OnTagMove: func(m TagMove) { mu.Lock(); moves = append(moves, m); mu.Unlock() }}, ttl)
	head := func() Answer {
		t.Helper()
		a, err := c.Manifest(context.Background(), o, "team/app", "v1", false)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	head()
	time.Sleep(ttl + 50*time.Millisecond)
	head() // revalidated, unchanged
	second := reg.PushIndex(t, "team/app", "v1", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	if _, err := c.Manifest(context.Background(), o, "team/app", second.Digest, true); err != nil {
		t.Fatal(err) // the new index's body is held before the tag is seen to move
	}
	time.Sleep(ttl + 50*time.Millisecond)
	if a := head(); string(a.Digest) != second.Digest {
		t.Fatalf("after the move: %s", a.Digest)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(moves) != 1 {
		t.Fatalf("%d moves reported, want 1: %+v", len(moves), moves)
	}
	m := moves[0]
	if m.Upstream != "reg.test" || m.Repository != "team/app" || m.Tag != "v1" || string(m.From.Digest) != first.Digest ||
		string(m.To.Digest) != second.Digest || !bytes.Equal(m.Body, second.Body) || m.At.IsZero() {
		t.Fatalf("move %+v (body %d bytes)", m, len(m.Body))
	}
}
