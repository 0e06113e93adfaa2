package cache

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/cache/redistest"
	"regcache/internal/budget"
	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// paths records the manifest requests a registry receives, as "METHOD ref".
type paths struct {
	mu   sync.Mutex
	seen []string
}

func recordManifests(reg *registrytest.Registry) *paths {
	p := &paths{}
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if i := strings.Index(r.URL.Path, "/manifests/"); i >= 0 {
			p.mu.Lock()
			p.seen = append(p.seen, r.Method+" "+r.URL.Path[i+len("/manifests/"):])
			p.mu.Unlock()
		}
		return false
	})
	return p
}

func (p *paths) count(req string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.seen {
		if s == req {
			n++
		}
	}
	return n
}

func newRefreshCache(t *testing.T, reg *registrytest.Registry, ttl time.Duration, b *budget.Budget) (*Cache, *Origin) {
	t.Helper()
	r, err := upstream.New(upstream.Options{Name: "reg.test", URL: reg.URL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{MaxSize: 8 << 20, MaxStale: time.Hour, NegativeTTL: time.Minute, RevalidateWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); r.Close() })
	return c, &Origin{Registry: r, TagTTL: ttl, Budget: b}
}

// askEvery looks ref up as a client does, every interval for d, and returns the statuses after
// the first.
func askEvery(t *testing.T, c *Cache, o *Origin, ref string, body bool, every, d time.Duration) []Status {
	t.Helper()
	var out []Status
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(every) {
		a, err := c.Manifest(context.Background(), o, "team/app", ref, body)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, a.Status)
	}
	return out[1:]
}

func allHits(t *testing.T, what string, sts []Status) {
	t.Helper()
	for i, st := range sts {
		if st != Hit {
			t.Fatalf("%s: answer %d after the first was %v; want every one a HIT (refreshed ahead)", what, i+1, st)
		}
	}
}

// TestRefreshAhead: a tag asked through its TTL is refreshed before it expires, about
// once per TTL, so that every answer after the first is a hit; a tag asked once is not.
func TestRefreshAhead(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "hot", types.OCIManifestSchema1)
	reg.PushImage(t, "team/app", "once", types.OCIManifestSchema1)
	seen := recordManifests(reg)
	const ttl = 500 * time.Millisecond
	c, o := newRefreshCache(t, reg, ttl, nil)
	if _, err := c.Manifest(context.Background(), o, "team/app", "once", false); err != nil {
		t.Fatal(err)
	}
	allHits(t, "hot, GET", askEvery(t, c, o, "hot", true, 20*time.Millisecond, 6*ttl))
	if n := seen.count("GET hot"); n != 1 {
		t.Fatalf("%d GETs of hot; the refreshes are HEADs", n)
	}
	// One HEAD per refresh, every 50–90% of a TTL: in six TTLs, about seven.
	if n := seen.count("HEAD hot"); n < 5 || n > 12 {
		t.Fatalf("%d HEADs of hot in six TTLs; want about one per TTL", n)
	}
	if n := seen.count("HEAD once"); n != 1 {
		t.Fatalf("a tag asked once cost %d HEADs; want its own, no refresh", n)
	}
}

// TestRefreshAheadFollowsMove: a refresh that finds the tag moved fetches the new body
// too when clients GET the tag, so their next GET is a hit with the new manifest.
func TestRefreshAheadFollowsMove(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	const ttl = 600 * time.Millisecond
	c, o := newRefreshCache(t, reg, ttl, nil)
	allHits(t, "before the move", askEvery(t, c, o, "v1", true, 20*time.Millisecond, ttl/4))
	moved := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	var sts []Status
	for end := time.Now().Add(2 * ttl); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		a, err := c.Manifest(context.Background(), o, "team/app", "v1", true)
		if err != nil {
			t.Fatal(err)
		}
		sts = append(sts, a.Status)
		if string(a.Digest) == moved.Digest {
			if a.Status != Hit || string(a.Body) != string(moved.Body) {
				t.Fatalf("the moved tag's first answer: %v with %d bytes; want a HIT with the new body", a.Status, len(a.Body))
			}
			return
		}
	}
	t.Fatalf("the move never showed within two TTLs: %v", sts)
}

// TestRefreshAheadBudget: a refresh takes the budget, and when it is spent the entry is
// left to expire: the client after it revalidates on demand, and is never refused.
func TestRefreshAheadBudget(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	seen := recordManifests(reg)
	b := budget.New(budget.Config{Upstream: "reg.test", Requests: 1, Per: time.Hour})
	const ttl = 400 * time.Millisecond
	c, o := newRefreshCache(t, reg, ttl, b)
	allHits(t, "the first window", askEvery(t, c, o, "v1", false, 20*time.Millisecond, ttl*95/100))
	// The one request the budget allows was the refresh.
	for end := time.Now().Add(ttl); seen.count("HEAD v1") < 2 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := seen.count("HEAD v1"); n != 2 || b.Stats().Taken[budget.Refresh] != 1 {
		t.Fatalf("%d HEADs, %d taken; want the client's and one refresh", n, b.Stats().Taken[budget.Refresh])
	}
	// The next window's refresh is refused: the entry expires, and a client revalidates.
	var sts []Status
	for end := time.Now().Add(2 * ttl); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		a, err := c.Manifest(context.Background(), o, "team/app", "v1", false)
		if err != nil {
			t.Fatalf("a client was refused: %v", err)
		}
		sts = append(sts, a.Status)
	}
	revalidated := 0
	for _, st := range sts {
		if st == Revalidated {
			revalidated++
		}
	}
	if revalidated == 0 || b.Stats().Refused[budget.Refresh] == 0 || b.Stats().Taken[budget.Refresh] != 1 {
		t.Fatalf("statuses %v, budget %+v; want the refresh refused and clients revalidating", sts, b.Stats())
	}
	// A background lookup refused serves nothing and changes nothing.
	before := c.store.tag(tagKey("reg.test", "team/app", "v1"))
	_, err := c.Load(context.Background(), Request{Origin: o, Repo: "team/app", Ref: "v1", Now: time.Now().Add(ttl), Background: budget.Watch})
	if !errors.Is(err, budget.ErrSpent) || c.store.tag(tagKey("reg.test", "team/app", "v1")) != before {
		t.Fatalf("a watch's lookup with the budget spent: %v; want refused, the entry untouched", err)
	}
}

// TestRefreshAheadFleet: three replicas sharing Redis, each asked through the TTL, refresh
// the tag about once per TTL between them: the first to reach its (random) refresh point
// asks upstream, the others take its answer from the fleet tier.
func TestRefreshAheadFleet(t *testing.T) {
	if redistest.Binary() == "" {
		redistest.Skip(t)
	}
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	seen := recordManifests(reg)
	const ttl = 600 * time.Millisecond
	var wg sync.WaitGroup
	for range 3 {
		rp := newReplica(t, reg, rs.Addr, time.Second)
		rp.o.TagTTL = ttl
		wg.Go(func() { allHits(t, "a replica", askEvery(t, rp.c, rp.o, "v1", false, 20*time.Millisecond, 5*ttl)) })
	}
	wg.Wait()
	if n := seen.count("HEAD v1"); n > 10 {
		t.Fatalf("%d HEADs in five TTLs from three replicas; want about one per TTL for the fleet", n)
	} else {
		t.Logf("%d HEADs in five TTLs from three replicas", n)
	}
}
