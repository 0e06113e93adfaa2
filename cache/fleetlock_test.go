package cache

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/cache/redistest"
	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// TestFleetLockHolderStopsRenewing: a lock left in Redis by a holder that no longer renews
// it (planted here with a 10-minute lifetime) does not stall a cold request: a lock whose
// renewal time is long past, or one in an older format that carries none, is gone around
// once it has gone a renewal interval unrenewed; and even a holder that keeps renewing
// without ever answering holds a waiter no longer than revalidate_wait plus the upstream
// timeout.
func TestFleetLockHolderStopsRenewing(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	for _, tag := range []string{"v2", "v3"} {
		reg.PutManifest(t, "team/app", tag, img.MediaType, img.Body)
	}
	const revalidateWait, upstreamTimeout, lockTTL = time.Second, 2 * time.Second, 600 * time.Millisecond
	r, err := upstream.New(upstream.Options{Name: "reg.test", URL: reg.URL, Timeout: upstreamTimeout})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{MaxSize: 8 << 20, MaxStale: time.Hour, NegativeTTL: time.Minute, RevalidateWait: revalidateWait,
		Redis: &RedisConfig{Addr: rs.Addr, KeyPrefix: "rc-test:", LockTTL: lockTTL}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); r.Close() })
	o := &Origin{Registry: r, TagTTL: time.Minute}
	lockKey := func(tag string) string { return "rc-test:lock:tag:reg.test/team/app:" + tag }
	headWithin := func(tag string, limit time.Duration) time.Duration {
		t.Helper()
		type result struct {
			a   Answer
			err error
		}
		done := make(chan result, 1)
		start := time.Now()
		go func() {
			a, err := c.Manifest(context.Background(), o, "team/app", tag, false)
			done <- result{a, err}
		}()
		select {
		case res := <-done:
			if res.err != nil || string(res.a.Digest) != img.Digest {
				t.Fatalf("%s: %s %v", tag, res.a.Digest, res.err)
			}
			return time.Since(start)
		case <-time.After(limit):
			t.Fatalf("cold HEAD of %s still waiting on the fleet lock after %v", tag, limit)
			return 0
		}
	}
	bound := revalidateWait + upstreamTimeout
	// A waiter that goes around a dead holder does so within a renewal interval or two
	// (stallAfter, ~0.65 s here), well before the bound, where any waiter gives up anyway:
	// finishing under takeOver tells the two apart with a second and more of slack.
	takeOver := bound - time.Second

	// A holder that renewed last 10 minutes ago, its lock set to live 10 minutes more.
	dead := fmt.Sprintf("%032x:%d", 0xdead, time.Now().Add(-10*time.Minute).UnixMilli())
	if _, err := rs.Do("SET", lockKey("v1"), dead, "PX", "600000"); err != nil {
		t.Fatal(err)
	}
	if took := headWithin("v1", 10*time.Second); took > takeOver {
		t.Fatalf("a lock renewed 10 minutes ago held a cold HEAD %v (gone around by %v, bound %v)", took, takeOver, bound)
	}

	// A lock value with no renewal time in it (an older regcache, or garbage).
	if _, err := rs.Do("SET", lockKey("v2"), "someone-else", "PX", "600000"); err != nil {
		t.Fatal(err)
	}
	if took := headWithin("v2", 10*time.Second); took > takeOver {
		t.Fatalf("a lock without a renewal time held a cold HEAD %v (gone around by %v, bound %v)", took, takeOver, bound)
	}

	// A holder that keeps renewing and never answers: the waiter gives up at the bound.
	stop := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		for {
			v := fmt.Sprintf("%032x:%d", 0xbeef, time.Now().UnixMilli())
			_, _ = rs.Do("SET", lockKey("v3"), v, "PX", "600000")
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	defer func() { close(stop); <-renewed }()
	time.Sleep(100 * time.Millisecond)
	took := headWithin("v3", 4*bound)
	if took < bound-200*time.Millisecond {
		t.Fatalf("a live holder's lock was gone around after %v, before the bound %v", took, bound)
	}
	t.Logf("bound %v: dead holder gone around, live holder waited %v", bound, took)
}

// TestFleetLockOneTakesOver: when several replicas find the same dead holder, one takes the
// lock over (compare-and-set on the value they all saw) and the others wait for its
// answer: the dead lock costs upstream one request, not one per replica.
func TestFleetLockOneTakesOver(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	// Slow enough that every replica is waiting before the one that took over is done.
	reg.SetFault(registrytest.OnManifests(registrytest.Delay(500 * time.Millisecond)))
	dead := fmt.Sprintf("%032x:%d", 0xdead, time.Now().Add(-10*time.Minute).UnixMilli())
	if _, err := rs.Do("SET", "rc-test:lock:tag:reg.test/team/app:v1", dead, "PX", "600000"); err != nil {
		t.Fatal(err)
	}
	var reps []*replica
	for range 3 {
		reps = append(reps, newReplica(t, reg, rs.Addr, 3*time.Second))
	}
	burst(t, reps, 9, "v1", img.Digest)
	if n := manifests(reg); n != 1 {
		t.Fatalf("%d upstream requests from 3 replicas that found one dead holder, want 1", n)
	}
}
