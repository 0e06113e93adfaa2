package main

// Budgets, end to end: 1,000 watched tags want far more background requests than the
// upstream's budget allows, and upstream never sees more than the budget in any window,
// wherever the window starts, with one replica and with three sharing Redis.
//
// Time is scaled: the budget of 100 per minute is 20 per 3 s here (the window 20
// times shorter, the budget 5 times smaller), and tag_ttl is 2 s, so the 1,000 tags want
// 500 looks a second where the budget allows under 7: as with 1,000 tags on the default
// 60 s TTL against 100 a minute, demand far above the budget, all the time. The property
// checked does not depend on the scale: no window of the budget's length, over every
// request upstream received (recorded with its arrival time), holds more than the budget.

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/cache/redistest"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// arrivals records when each manifest and tags request reached a registry.
type arrivals struct {
	mu    sync.Mutex
	times []time.Time
}

func recordArrivals(reg *registrytest.Registry) *arrivals {
	a := &arrivals{}
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") || strings.HasSuffix(r.URL.Path, "/tags/list") {
			a.mu.Lock()
			a.times = append(a.times, time.Now())
			a.mu.Unlock()
		}
		return false
	})
	return a
}

// since is the arrivals from t on, in order.
func (a *arrivals) since(t time.Time) []time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []time.Time
	for _, at := range a.times {
		if !at.Before(t) {
			out = append(out, at)
		}
	}
	slices.SortFunc(out, func(x, y time.Time) int { return x.Compare(y) })
	return out
}

// busiestWindow is the most arrivals any closed window of length per holds, and where it
// starts.
func busiestWindow(times []time.Time, per time.Duration) (most int, at time.Time) {
	j := 0
	for i := range times {
		for j < len(times) && !times[j].After(times[i].Add(per)) {
			j++
		}
		if j-i > most {
			most, at = j-i, times[i]
		}
	}
	return most, at
}

// pushTagged seeds n tags of one image in repo, named w0000...: one image pushed, the rest
// tagged by manifest.
func pushTagged(t *testing.T, reg *registrytest.Registry, repo string, n int) {
	t.Helper()
	img := reg.PushImage(t, repo, "w0000", types.OCIManifestSchema1)
	for i := 1; i < n; i++ {
		reg.PutManifest(t, repo, fmt.Sprintf("w%04d", i), img.MediaType, img.Body)
	}
}

func TestBudgetBoundsWatches(t *testing.T) {
	t.Parallel()
	const tags, budget, per, run = 1000, 20, 3 * time.Second, 10 * time.Second
	for _, replicas := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d replicas", replicas), func(t *testing.T) {
			cacheLines := "  tag_ttl: 2s\n"
			if replicas > 1 {
				if redistest.Binary() == "" {
					redistest.Skip(t)
				}
				rs := redistest.Start(t)
				cacheLines += "  redis:\n    addr: " + rs.Addr + "\n    timeout: 2s\n"
			}
			reg := registrytest.New(t, registrytest.NoAuth)
			pushTagged(t, reg, "team/app", tags)
			seen := recordArrivals(reg)
			cfg := harness.Config(cacheLines, harness.Upstream("reg.test", reg.URL, fmt.Sprintf("budget: {requests: %d, per: %s}", budget, per))) +
				harness.Block("watch", "- repository: reg.test/team/app", `  tags: '^w\d+$'`)
			start := time.Now()
			var reps []*harness.Instance
			for range replicas {
				reps = append(reps, startRegcacheWith(t, cfg, harness.Options{NoAccessLog: true}))
			}
			time.Sleep(run)
			times := seen.since(start)
			most, at := busiestWindow(times, per)
			if most > budget {
				t.Fatalf("%d background requests reached upstream within %v from %v (after start); the budget is %d per %v",
					most, per, at.Sub(start), budget, per)
			}
			// Not vacuous: the budget is spent, window after window (each request holds its
			// place for its own time plus the window).
			if min := int(run/per) * budget * 3 / 4; len(times) < min {
				t.Fatalf("%d background requests in %v; a budget of %d per %v, always in demand, should admit about %d",
					len(times), run, budget, per, int(run/per)*budget)
			}
			var taken, refused float64
			for i, rc := range reps {
				m := rc.Metrics(t)
				taken += m[`regcache_background_requests_total{reason="watch",upstream="reg.test"}`]
				refused += m[`regcache_budget_refused_total{reason="watch",upstream="reg.test"}`]
				if l := m[`regcache_budget_limit{kind="all",upstream="reg.test"}`]; l != budget || m[`regcache_budget_window_seconds{kind="all",upstream="reg.test"}`] != per.Seconds() {
					t.Fatalf("replica %d: regcache_budget_limit %v per %vs", i, l, m[`regcache_budget_window_seconds{kind="all",upstream="reg.test"}`])
				}
				if s := m[`regcache_budget_spent{kind="all",upstream="reg.test"}`]; s > budget {
					t.Fatalf("replica %d: regcache_budget_spent %v above the budget", i, s)
				}
			}
			// Counted when admitted: those admitted and not yet arrived (a few per replica's
			// workers) are the difference.
			if after := len(seen.since(start)); int(taken) > after+8*replicas || int(taken) < len(times) {
				t.Fatalf("the replicas counted %v background requests; upstream saw %d (then %d)", taken, len(times), after)
			}
			t.Logf("%d replicas, %d watched tags: %d background requests upstream in %v (busiest %v window: %d), %v refused",
				replicas, tags, len(times), run, per, most, refused)
		})
	}
}
