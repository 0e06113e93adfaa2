package proxy

import (
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"regcache/cache"
	"regcache/internal/budget"
	"regcache/internal/feed"
	"regcache/internal/watch"
	"regcache/internal/webhook"
	"regcache/upstream"
)

// The label values a request can take, as small indexes, so that the counter for a
// request is found by array indexing: no label hashing, map or lock on the hit path.
var (
	methodNames  = [...]string{"GET", "HEAD", "other"}
	statusCodes  = [...]int{200, 206, 400, 401, 403, 404, 405, 429, 500, 502, 503, 504}
	statusLabels = func() (out [len(statusCodes) + 1]string) {
		for i, c := range statusCodes {
			out[i] = strconv.Itoa(c)
		}
		out[len(statusCodes)] = "other"
		return
	}()
)

func methodIndex(m []byte) int {
	switch string(m) {
	case "GET":
		return 0
	case "HEAD":
		return 1
	}
	return 2
}

// cacheIndex is the cache label's index: the status itself, None for any other value.
func cacheIndex(st cache.Status) int { return int(min(st, cache.None)) }

func statusIndex(code int) int {
	for i, c := range statusCodes {
		if c == code {
			return i
		}
	}
	return len(statusCodes)
}

// Metrics holds regcache's Prometheus collectors; its zero value is not usable, use
// NewMetrics. It implements upstream.Observer.
type Metrics struct {
	registry         *prometheus.Registry
	requests         *prometheus.CounterVec
	duration         *prometheus.HistogramVec
	upstreamRequests *prometheus.CounterVec
	upstreamDuration *prometheus.HistogramVec

	// counters[kind][method][cache][status], made on first use.
	counters  [numKinds][len(methodNames)][cache.None + 1][len(statusLabels)]atomic.Pointer[prometheus.Counter]
	durations [numKinds]prometheus.Observer
	handler   fasthttp.RequestHandler
	// start is when regcache started, for the status page's uptime.
	start time.Time
}

// NewMetrics builds the collectors, with Go runtime and process metrics beside them.
func NewMetrics() *Metrics {
	m := &Metrics{registry: prometheus.NewRegistry(), start: time.Now()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "regcache_requests_total",
		Help: "Client requests answered, by route kind, method, status and cache result (none when the cache did not answer).",
	}, []string{"route", "method", "status", "cache"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "regcache_request_duration_seconds",
		Help:    "Time to answer a client request, by route kind.",
		Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"route"})
	m.upstreamRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: seriesUpstreamRequests,
		Help: "HTTP exchanges with upstreams (redirect hops, tokens and pings included), by upstream, method, kind and status (error when none came).",
	}, []string{"upstream", "method", "kind", "status"})
	m.upstreamDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "regcache_upstream_request_duration_seconds",
		Help:    "Time to an upstream's answer headers, by upstream and kind.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 10),
	}, []string{"upstream", "kind"})
	m.registry.MustRegister(m.requests, m.duration, m.upstreamRequests, m.upstreamDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.registry.MustRegister(buildSeries(m.start)...)
	for r := range numKinds {
		m.durations[r] = m.duration.WithLabelValues(kindNames[r])
	}
	m.handler = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	return m
}

// observe counts one answered request. On the hit path it is an array index, an atomic
// load and two atomic adds.
func (m *Metrics) observe(r Kind, method []byte, status int, st cache.Status, took time.Duration) {
	mi, ci, si := methodIndex(method), cacheIndex(st), statusIndex(status)
	slot := &m.counters[r][mi][ci][si]
	c := slot.Load()
	if c == nil {
		label := statusLabels[si]
		if si == len(statusCodes) {
			label = strconv.Itoa(status)
		}
		counter := m.requests.WithLabelValues(kindNames[r], methodNames[mi], label, cache.Status(ci).String())
		if si != len(statusCodes) { // "other" statuses vary: never pin one in the slot
			slot.CompareAndSwap(nil, &counter)
		}
		c = &counter
	}
	(*c).Inc()
	m.durations[r].Observe(took.Seconds())
}

// ObserveUpstream implements upstream.Observer; upstream traffic is the slow path.
func (m *Metrics) ObserveUpstream(name, method, kind string, status int, took time.Duration) {
	s := "error"
	if status != 0 {
		s = strconv.Itoa(status)
	}
	m.upstreamRequests.WithLabelValues(name, method, kind, s).Inc()
	m.upstreamDuration.WithLabelValues(name, kind).Observe(took.Seconds())
}

// WatchCache exports the cache's size, evictions, coalesced waiters and work in flight.
func (m *Metrics) WatchCache(c *cache.Cache) {
	m.registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: seriesSize, Help: "Bytes held in the cache (bodies plus per-entry overhead)."},
			func() float64 { return float64(c.Stats().SizeBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: seriesMax, Help: "cache.max_size."},
			func() float64 { return float64(c.Stats().MaxBytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: seriesEvictions, Help: "Entries removed from memory: evicted to make room, expired or deleted."},
			func() float64 { return float64(c.Stats().Evictions) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regcache_coalesced_waiters_total", Help: "Requests that waited on another request's upstream fetch instead of making their own."},
			func() float64 { return float64(c.Stats().Coalesced) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "regcache_upstream_inflight", Help: "Upstream fetches under way."},
			func() float64 { return float64(c.Stats().InFlight) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regcache_tags_dropped_total", Help: "Tags upstreams listed outside the tag grammar, dropped and never served."},
			func() float64 { return float64(c.Stats().TagsDropped) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regcache_tags_truncated_total", Help: "Tags listings cut at cache.tags_max_count or cache.tags_max_bytes."},
			func() float64 { return float64(c.Stats().TagsTruncated) }),
		entriesSeries(c),
	)
	if c.RedisStats() == nil {
		return
	}
	redis := func(f func(*cache.RedisStats) float64) func() float64 {
		return func() float64 { return f(c.RedisStats()) }
	}
	m.registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "regcache_redis_up", Help: "1 while the shared Redis tier answers, 0 while regcache serves without it."},
			redis(func(s *cache.RedisStats) float64 {
				if s.Up {
					return 1
				}
				return 0
			})),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: seriesRedisErrors, Help: "Redis calls that failed (down, slow, refused)."},
			redis(func(s *cache.RedisStats) float64 { return float64(s.Errors) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regcache_redis_garbage_total", Help: "Redis entries refused on read (undecodable, or a body not matching its digest) and deleted."},
			redis(func(s *cache.RedisStats) float64 { return float64(s.Garbage) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: seriesRedisHits, Help: "Shared-tier reads that found a valid entry (a tag entry may still be stale)."},
			redis(func(s *cache.RedisStats) float64 { return float64(s.Hits) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: seriesRedisMisses, Help: "Shared-tier reads that found nothing usable (a replica waiting on another's lock counts each poll)."},
			redis(func(s *cache.RedisStats) float64 { return float64(s.Misses) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regcache_fleet_lock_waits_total", Help: "Fetches that waited for another replica's upstream request instead of making their own."},
			redis(func(s *cache.RedisStats) float64 { return float64(s.LockWaits) })),
	)
}

// WatchEvents publishes the change feed's counters.
func (m *Metrics) WatchEvents(l *feed.Log) {
	for typ, count := range map[string]func(feed.Stats) uint64{
		feed.TagChanged: func(s feed.Stats) uint64 { return s.Changed },
		feed.TagCreated: func(s feed.Stats) uint64 { return s.Created },
		feed.TagDeleted: func(s feed.Stats) uint64 { return s.Deleted },
	} {
		m.registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: seriesEvents, ConstLabels: prometheus.Labels{"type": typ},
			Help: "Change-feed events recorded, by type."},
			func() float64 { return float64(count(l.Stats())) }))
	}
	m.registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regcache_events_unshared_total",
			Help: "Change-feed events kept on this replica alone because the fleet's Redis failed (the other replicas and the fleet's webhooks do not have them)."},
			func() float64 { return float64(l.Stats().Unshared) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "regcache_events_subscribers", Help: "Change-feed streams open."},
			func() float64 { return float64(l.Stats().Subscribers) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regcache_events_subscribers_dropped_total",
			Help: "Change-feed streams dropped for falling more than 256 events behind (they resume with Last-Event-ID)."},
			func() float64 { return float64(l.Stats().Dropped) }),
	)
}

// The watch series: per upstream with a watch, read from the watcher once per scrape.
var (
	watchTags = prometheus.NewDesc("regcache_watch_tags",
		"Tags kept revalidated by watch: (named, or matching a watched repository's pattern).", []string{"upstream"}, nil)
	watchRevalidations = prometheus.NewDesc("regcache_watch_revalidations_total",
		"Watched tags looked up after going stale (by upstream, or from another replica's answer through Redis).", []string{"upstream"}, nil)
	watchListings = prometheus.NewDesc("regcache_watch_listings_total",
		"Tag listings of watched repositories read.", []string{"upstream"}, nil)
	watchErrors = prometheus.NewDesc("regcache_watch_errors_total",
		"Watch lookups and listings that failed.", []string{"upstream"}, nil)
	watchWaits = prometheus.NewDesc("regcache_watch_waits_total",
		"Watch lookups put off because the upstream's rate limit was spent or held, or its budget for background work was spent.",
		[]string{"upstream"}, nil)
)

// WatchWatches publishes the watches' counters, per upstream with a watch.
func (m *Metrics) WatchWatches(w *watch.Watcher) {
	m.registry.MustRegister(watchCollector{w})
}

type watchCollector struct{ w *watch.Watcher }

func (c watchCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{watchTags, watchRevalidations, watchListings, watchErrors, watchWaits} {
		ch <- d
	}
}

func (c watchCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.w.Stats() {
		ch <- prometheus.MustNewConstMetric(watchTags, prometheus.GaugeValue, float64(s.Tags), s.Upstream)
		for d, n := range map[*prometheus.Desc]uint64{watchRevalidations: s.Revalidations, watchListings: s.Listings,
			watchErrors: s.Errors, watchWaits: s.Waits} {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), s.Upstream)
		}
	}
}

// The webhook series: one per hook, read from the dispatcher at each scrape.
var (
	webhookDeliveries = prometheus.NewDesc("regcache_webhook_deliveries_total",
		"Webhook deliveries, by hook and outcome: delivered (2xx), failed (refused, or failing past max_retries), "+
			"retried (a failed attempt followed by another).", []string{"hook", "outcome"}, nil)
	webhookQueue = prometheus.NewDesc("regcache_webhook_queue",
		"Events waiting for a webhook, the one being delivered included.", []string{"hook"}, nil)
	webhookDropped = prometheus.NewDesc("regcache_webhook_dropped_total",
		"Events a webhook never got: its queue was full, or regcache shut down first.", []string{"hook"}, nil)
)

// WatchWebhooks exports each webhook's deliveries, queue and drops.
func (m *Metrics) WatchWebhooks(d *webhook.Dispatcher) {
	m.registry.MustRegister(webhookCollector{d})
}

type webhookCollector struct{ d *webhook.Dispatcher }

func (c webhookCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- webhookDeliveries
	ch <- webhookQueue
	ch <- webhookDropped
}

func (c webhookCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.d.Stats() {
		for outcome, n := range map[string]uint64{"delivered": s.Delivered, "failed": s.Failed, "retried": s.Retries} {
			ch <- prometheus.MustNewConstMetric(webhookDeliveries, prometheus.CounterValue, float64(n), s.Name, outcome)
		}
		ch <- prometheus.MustNewConstMetric(webhookQueue, prometheus.GaugeValue, float64(s.Queued), s.Name)
		ch <- prometheus.MustNewConstMetric(webhookDropped, prometheus.CounterValue, float64(s.Dropped), s.Name)
	}
}

// The budget series: per upstream with a budget, read from it at each scrape (with the
// Redis tier, one call for the fleet's spending).
var (
	backgroundRequests = prometheus.NewDesc("regcache_background_requests_total",
		"Background requests this replica sent upstream (refresh-ahead, watches and their listings), by upstream and reason.",
		[]string{"upstream", "reason"}, nil)
	budgetRefused = prometheus.NewDesc("regcache_budget_refused_total",
		"Background requests the upstream's budget refused (never sent), by upstream and reason.", []string{"upstream", "reason"}, nil)
	budgetLimit = prometheus.NewDesc("regcache_budget_limit",
		"Background requests allowed in any window: kind all is upstreams[].budget; kind pulls is budget_share of the limit the upstream announces "+
			"(manifest GETs; absent until it announces one with a window).", []string{"upstream", "kind"}, nil)
	budgetWindow = prometheus.NewDesc("regcache_budget_window_seconds",
		"The length of the budget's window, by kind (all, pulls).", []string{"upstream", "kind"}, nil)
	budgetSpent = prometheus.NewDesc("regcache_budget_spent",
		"Background requests in the window ending now, by kind (all, pulls): the fleet's with the Redis tier.", []string{"upstream", "kind"}, nil)
)

// WatchBudgets exports each upstream's budget for background work.
func (m *Metrics) WatchBudgets(ups []*Upstream) {
	m.registry.MustRegister(budgetCollector(ups))
}

type budgetCollector []*Upstream

func (c budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{backgroundRequests, budgetRefused, budgetLimit, budgetWindow, budgetSpent} {
		ch <- d
	}
}

func (c budgetCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c {
		b := u.Origin.Budget
		if b == nil {
			continue
		}
		s := b.Stats()
		for _, r := range budget.Background {
			ch <- prometheus.MustNewConstMetric(backgroundRequests, prometheus.CounterValue, float64(s.Taken[r]), u.Name, r.String())
			ch <- prometheus.MustNewConstMetric(budgetRefused, prometheus.CounterValue, float64(s.Refused[r]), u.Name, r.String())
		}
		gauges := func(kind string, limit int, per time.Duration, spent int) {
			ch <- prometheus.MustNewConstMetric(budgetLimit, prometheus.GaugeValue, float64(limit), u.Name, kind)
			ch <- prometheus.MustNewConstMetric(budgetWindow, prometheus.GaugeValue, per.Seconds(), u.Name, kind)
			ch <- prometheus.MustNewConstMetric(budgetSpent, prometheus.GaugeValue, float64(spent), u.Name, kind)
		}
		gauges("all", s.Limit, s.Per, s.Spent)
		if s.PullsLimit >= 0 {
			gauges("pulls", s.PullsLimit, s.PullsPer, s.PullsSpent)
		}
	}
}

// WatchUpstreams exports each upstream's last seen rate-limit headers, its breaker and
// the stale answers its backoff served. Unknown values are NaN, so an alert on "remaining < N" cannot fire before the upstream has said anything.
func (m *Metrics) WatchUpstreams(ups []*Upstream) {
	m.registry.MustRegister(upstreamStatusCollector(ups))
	for _, u := range ups {
		o := u.Origin
		reg := o.Registry
		labels := prometheus.Labels{"upstream": u.Name}
		m.registry.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: seriesRemaining, ConstLabels: labels,
				Help: "RateLimit-Remaining last sent by the upstream (Docker Hub: pulls left in the window); NaN until seen."},
				func() float64 { return rateValue(reg.RateLimit(), false) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: seriesLimit, ConstLabels: labels,
				Help: "RateLimit-Limit last sent by the upstream; NaN until seen."},
				func() float64 { return rateValue(reg.RateLimit(), true) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regcache_upstream_auth_failures_total", ConstLabels: labels,
				Help: "Token requests the upstream's token endpoint refused (401/403): regcache's own credentials rejected; stale answers are served meanwhile."},
				func() float64 { return float64(reg.Credentials().Failures) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regcache_upstream_busy_total", ConstLabels: labels,
				Help: "Requests turned away because all max_concurrent connections to the upstream stayed busy (answered 503, or served stale)."},
				func() float64 { return float64(reg.TurnedAway()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: seriesBreakerOpen, ConstLabels: labels,
				Help: "1 while the upstream's breaker is open: requests are answered without asking it, one probe per backoff."},
				func() float64 {
					if reg.Breaker().Open {
						return 1
					}
					return 0
				}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "regcache_upstream_backoff_seconds", ConstLabels: labels,
				Help: "The open breaker's backoff between probes of the upstream; 0 while closed."},
				func() float64 { return reg.Breaker().Backoff.Seconds() }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "regcache_stale_backoff_total", ConstLabels: labels,
				Help: "Stale answers served without asking the upstream because the tag's or listing's backoff was in force."},
				func() float64 { return float64(o.StaleBackoff()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: seriesHeldBack, ConstLabels: labels,
				Help: "1 while regcache holds requests back after a 429 from the upstream."},
				func() float64 {
					s := reg.RateLimit()
					now := time.Now()
					if s.GETBlockedUntil.After(now) || s.TagsBlockedUntil.After(now) || s.AllBlockedUntil.After(now) {
						return 1
					}
					return 0
				}),
		)
	}
}

func rateValue(s upstream.RateLimitState, limit bool) float64 {
	v := s.Remaining
	if limit {
		v = s.Limit
	}
	if !s.Known || v < 0 {
		return math.NaN()
	}
	return float64(v)
}
