package cache

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// TestCloseWithFlightInProgress drives a cache against a real registry (a miss, a hit, a
// 404, and a fetch whose only waiter gives up), closes it while that fetch is still under
// way, and checks the fetch then ends on its own without storing anything or hanging.
// TestMain's leak check then finds nothing left: not the flight, not ristretto's
// goroutines, not the upstream transport's connections.
func TestCloseWithFlightInProgress(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	reg.PushImage(t, "team/app", "slow", types.OCIManifestSchema1)
	r, err := upstream.New(upstream.Options{Name: "reg.test", URL: reg.URL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := New(Config{MaxSize: 1 << 20, MaxStale: time.Hour, NegativeTTL: time.Minute, RevalidateWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	o := &Origin{Registry: r, TagTTL: time.Hour}
	ctx := context.Background()
	for _, want := range []Status{Miss, Hit} {
		a, err := c.Manifest(ctx, o, "team/app", "v1", true)
		if err != nil || a.Status != want {
			t.Fatalf("v1: %v %v, want %v", a.Status, err, want)
		}
	}
	if _, err := c.Manifest(ctx, o, "team/ghost", "v1", true); !errors.Is(err, upstream.ErrNotFound) {
		t.Fatalf("ghost: %v, want not found", err)
	}

	reg.SetFault(registrytest.OnManifests(registrytest.Delay(300 * time.Millisecond)))
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := c.Manifest(short, o, "team/app", "slow", true); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow: %v, want the waiter's deadline", err)
	}
	if n := c.Stats().InFlight; n != 1 {
		t.Fatalf("%d fetches in flight after the waiter left, want 1", n)
	}
	c.Close() // the fetch is still waiting on upstream
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().InFlight != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the fetch in flight at Close never ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := c.Hit(&Request{Origin: o, Repo: "team/app", Ref: "slow", Now: time.Now()}); ok {
		t.Error("a closed cache stored the late answer")
	}
	c.Close() // twice is harmless
}
