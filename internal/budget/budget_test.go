package budget_test

import (
	"errors"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/cache"
	"regcache/cache/redistest"
	"regcache/internal/budget"
	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// fleet runs workers that take b's budget (budgets[i%len]) as fast as they are let, each
// admitted request "arriving upstream" at a random point between its admission and its
// end, for d; it returns the arrival times.
func fleet(t *testing.T, budgets []*budget.Budget, workers int, d time.Duration) []time.Time {
	t.Helper()
	var mu sync.Mutex
	var arrivals []time.Time
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for i := range workers {
		b := budgets[i%len(budgets)]
		wg.Go(func() {
			for time.Now().Before(stop) {
				done, err := b.Take(budget.Watch, false)
				if err != nil {
					var s *budget.Spent
					if !errors.As(err, &s) || s.RetryAfter <= 0 {
						t.Errorf("refusal %v; want a *budget.Spent with a wait", err)
						return
					}
					// Back a little before the wait says, to probe the edge of the window.
					time.Sleep(min(s.RetryAfter, time.Duration(rand.N(5))*time.Millisecond))
					continue
				}
				time.Sleep(time.Duration(rand.N(3000)) * time.Microsecond) // to upstream
				at := time.Now()
				time.Sleep(time.Duration(rand.N(3000)) * time.Microsecond) // the answer back
				done()
				mu.Lock()
				arrivals = append(arrivals, at)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.SortFunc(arrivals, func(a, b time.Time) int { return a.Compare(b) })
	return arrivals
}

// busiest is the most arrivals any closed window of length per holds.
func busiest(arrivals []time.Time, per time.Duration) int {
	most, j := 0, 0
	for i := range arrivals {
		for j < len(arrivals) && !arrivals[j].After(arrivals[i].Add(per)) {
			j++
		}
		most = max(most, j-i)
	}
	return most
}

// TestWindowNeverHoldsMore: requests taken as fast as a budget lets them, each reaching
// upstream at some point between its admission and its end: no window of the budget's
// length, wherever it starts, holds more than the budget, and the budget is used (no
// window is starved: a log that refused too much would pass the first check).
func TestWindowNeverHoldsMore(t *testing.T) {
	t.Parallel()
	const n, per, run = 5, 200 * time.Millisecond, 2 * time.Second
	b := budget.New(budget.Config{Upstream: "reg.test", Requests: n, Per: per})
	arrivals := fleet(t, []*budget.Budget{b}, 8, run)
	if most := busiest(arrivals, per); most > n {
		t.Fatalf("%d requests within one %v window; the budget is %d", most, per, n)
	}
	// Each request holds its place for its own time (up to 6 ms) plus the window.
	if min := int(run/(per+6*time.Millisecond)) * n * 6 / 10; len(arrivals) < min {
		t.Fatalf("%d requests in %v; a budget of %d per %v should admit about %d", len(arrivals), run, n, per, int(run/per)*n)
	}
	s := b.Stats()
	if s.Taken[budget.Watch] != uint64(len(arrivals)) || s.Refused[budget.Watch] == 0 || s.Limit != n || s.Per != per || s.Shared {
		t.Fatalf("stats %+v after %d admitted", s, len(arrivals))
	}
}

// TestWindowBoundary: N requests that end at once fill the window; the next is refused
// until exactly a window after they ended (not a fixed window's boundary), with the wait
// said, and a request still in flight holds its place however long it runs.
func TestWindowBoundary(t *testing.T) {
	t.Parallel()
	const n, per = 3, 300 * time.Millisecond
	b := budget.New(budget.Config{Upstream: "reg.test", Requests: n, Per: per})
	var dones []func()
	for range n {
		done, err := b.Take(budget.Refresh, false)
		if err != nil {
			t.Fatal(err)
		}
		dones = append(dones, done)
	}
	// In flight: no window passes while they run.
	time.Sleep(per + 50*time.Millisecond)
	if _, err := b.Take(budget.Refresh, false); !errors.Is(err, budget.ErrSpent) {
		t.Fatalf("a fourth request with three in flight for longer than the window: %v; want refused", err)
	}
	first := time.Now() // no end is sooner
	for _, d := range dones {
		d()
		d() // a second call does nothing
	}
	ended := time.Now() // nor later
	_, err := b.Take(budget.Refresh, false)
	var s *budget.Spent
	if !errors.As(err, &s) || s.Pull || s.RetryAfter < per/2 || s.RetryAfter > per+10*time.Millisecond {
		t.Fatalf("just after they ended: %v; want refused for about %v", err, per)
	}
	if h := b.HeldUntil(false); h.Before(first.Add(per)) {
		t.Fatalf("HeldUntil %v after the first end; want a window after it", h.Sub(first))
	}
	time.Sleep(time.Until(first.Add(per - 30*time.Millisecond)))
	if _, err := b.Take(budget.Refresh, false); err == nil {
		t.Fatal("admitted before a window had passed since the three ended")
	}
	time.Sleep(time.Until(ended.Add(per + 10*time.Millisecond)))
	for i := range n {
		if done, err := b.Take(budget.Refresh, false); err != nil {
			t.Fatalf("request %d after the window: %v", i, err)
		} else {
			done()
		}
	}
	if st := b.Stats(); st.Spent != n || st.Taken[budget.Refresh] != 2*n || st.Refused[budget.Refresh] != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func redisClient(t *testing.T, addr string) *cache.RedisConfig {
	t.Helper()
	rc := cache.RedisConfig{Addr: addr, OpTimeout: 2 * time.Second}.WithDefaults()
	return &rc
}

// TestFleetSharesOneBudget: three replicas' budgets on one redis-server admit, between
// them, no more than the budget in any window: one log for the fleet, not one each.
func TestFleetSharesOneBudget(t *testing.T) {
	t.Parallel()
	if redistest.Binary() == "" {
		redistest.Skip(t)
	}
	rs := redistest.Start(t)
	const n, per, run = 6, 300 * time.Millisecond, 3 * time.Second
	var budgets []*budget.Budget
	for range 3 {
		rc := redisClient(t, rs.Addr)
		rdb := cache.NewRedisClient(*rc)
		t.Cleanup(func() { _ = rdb.Close() })
		budgets = append(budgets, budget.New(budget.Config{Upstream: "reg.test", Requests: n, Per: per, Redis: rdb, Prefix: rc.KeyPrefix,
			OpTimeout: rc.OpTimeout, InFlight: 10 * time.Second}))
	}
	arrivals := fleet(t, budgets, 9, run)
	if most := busiest(arrivals, per); most > n {
		t.Fatalf("%d requests within one %v window across three replicas; the fleet's budget is %d", most, per, n)
	}
	if min := int(run/(per+20*time.Millisecond)) * n / 2; len(arrivals) < min {
		t.Fatalf("%d requests in %v across the fleet; a budget of %d per %v should admit about %d", len(arrivals), run, n, per, int(run/per)*n)
	}
	var taken uint64
	for _, b := range budgets {
		s := b.Stats()
		if !s.Shared || s.Spent > n {
			t.Fatalf("stats %+v; want the fleet's spending, at most %d", s, n)
		}
		taken += s.Taken[budget.Watch]
	}
	if taken != uint64(len(arrivals)) {
		t.Fatalf("replicas counted %d taken, %d arrived", taken, len(arrivals))
	}
	t.Logf("%d requests in %v across 3 replicas, budget %d per %v", len(arrivals), run, n, per)

	// Redis gone: each replica keeps to the budget on its own.
	rs.Kill()
	done, err := budgets[0].Take(budget.Watch, false)
	if err != nil {
		// The fleet's last refusal may still hold; it ends within a window.
		time.Sleep(per + 10*time.Millisecond)
		done, err = budgets[0].Take(budget.Watch, false)
	}
	if err != nil {
		t.Fatalf("with Redis down: %v; want the replica's own log to decide", err)
	}
	done()
}

// TestAutoTakesTheAnnouncedWindow: under auto, background manifest GETs may take
// budget_share of the limit upstream announces, over the window it announces (read from
// RateLimit-Limit by the upstream client), while HEADs go on within the 10 a second.
func TestAutoTakesTheAnnouncedWindow(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	r, err := upstream.New(upstream.Options{Name: "reg.test", URL: reg.URL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	b := budget.New(budget.Config{Upstream: "reg.test", Share: 50, RateLimit: r.RateLimit})
	// Nothing announced yet: GETs are bounded by the 10 a second alone.
	if s := b.Stats(); s.Limit != budget.DefaultRequests || s.Per != budget.DefaultPer || s.PullsLimit != -1 {
		t.Fatalf("stats %+v; want auto, %d per %v, and no limit on GETs before upstream announced one", s, budget.DefaultRequests, budget.DefaultPer)
	}
	reg.SetFault(registrytest.WithHeaders("RateLimit-Limit", "4;w=2", "RateLimit-Remaining", "3;w=2"))
	if _, err := r.HeadManifest(t.Context(), "team/app", "v1"); err != nil {
		t.Fatal(err)
	}
	if s := b.Stats(); s.PullsLimit != 2 || s.PullsPer != 2*time.Second {
		t.Fatalf("stats %+v; want 50%% of 4 GETs per 2s", s)
	}
	for range 2 {
		done, err := b.Take(budget.Refresh, true)
		if err != nil {
			t.Fatal(err)
		}
		done()
	}
	ended := time.Now()
	_, err = b.Take(budget.Refresh, true)
	var s *budget.Spent
	if !errors.As(err, &s) || !s.Pull || s.RetryAfter < time.Second {
		t.Fatalf("a third GET within the announced 2 s: %v; want refused as the GETs' share, for most of 2 s", err)
	}
	// HEADs are not GETs: they go on, up to the 10 a second.
	for i := range 8 {
		done, err := b.Take(budget.Refresh, false)
		if err != nil {
			t.Fatalf("HEAD %d: %v", i, err)
		}
		done()
	}
	if _, err := b.Take(budget.Refresh, false); err == nil || errors.As(err, &s) && s.Pull {
		t.Fatalf("an eleventh request within a second: %v; want refused by the 10 a second", err)
	}
	time.Sleep(time.Until(ended.Add(2*time.Second + 10*time.Millisecond)))
	if done, err := b.Take(budget.Refresh, true); err != nil {
		t.Fatalf("a GET once the announced window passed: %v", err)
	} else {
		done()
	}
	if n := reg.Count(http.MethodHead, "manifest"); n != 1 {
		t.Fatalf("the budget asked upstream itself (%d HEADs)", n)
	}
}

// TestCancelGivesLeaveBack: a request refused on the way (never sent) spends nothing.
func TestCancelGivesLeaveBack(t *testing.T) {
	t.Parallel()
	const n = 3
	b := budget.New(budget.Config{Upstream: "reg.test", Requests: n, Per: time.Hour})
	for round := range 3 {
		for i := range n {
			tk, err := b.Grant(budget.Watch, false)
			if err != nil {
				t.Fatalf("round %d, request %d: %v; cancelled leaves must not count", round, i, err)
			}
			tk.Cancel()
			tk.Done() // after Cancel: nothing
		}
	}
	if st := b.Stats(); st.Spent != 0 || st.Taken[budget.Watch] != 0 {
		t.Fatalf("stats %+v; want nothing spent or taken", st)
	}
	tk, err := b.Grant(budget.Watch, false)
	if err != nil {
		t.Fatal(err)
	}
	tk.Done()
	if st := b.Stats(); st.Spent != 1 {
		t.Fatalf("spent %d after one request; want 1", st.Spent)
	}
}
