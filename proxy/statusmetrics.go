package proxy

// The series the status page needs beside the others (status.go reads the page's figures
// from /metrics' own registry, so that the two never disagree): which build runs since
// when, each upstream's client requests and what they saved, its failures, its rate-limit
// window, and the cache's entries.

import (
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"regcache/cache"
	"regcache/internal/version"
)

// Series names the status page reads back from the registry, and the metrics define
// themselves by: a rename cannot leave the page reading a series that is gone.
const (
	seriesStart            = "regcache_start_time_seconds"
	seriesClientRequests   = "regcache_upstream_client_requests_total"
	seriesSaved            = "regcache_upstream_requests_saved_total"
	seriesUpstreamRequests = "regcache_upstream_requests_total"
	seriesErrors           = "regcache_upstream_errors_total"
	seriesLastError        = "regcache_upstream_last_error_timestamp_seconds"
	seriesRemaining        = "regcache_upstream_ratelimit_remaining"
	seriesLimit            = "regcache_upstream_ratelimit_limit"
	seriesWindow           = "regcache_upstream_ratelimit_window_seconds"
	seriesBreakerOpen      = "regcache_upstream_breaker_open"
	seriesHeldBack         = "regcache_upstream_held_back"
	seriesEntries          = "regcache_cache_entries"
	seriesSize             = "regcache_cache_size_bytes"
	seriesMax              = "regcache_cache_max_bytes"
	seriesEvictions        = "regcache_cache_evictions_total"
	seriesRedisErrors      = "regcache_redis_errors_total"
	seriesRedisHits        = "regcache_redis_hits_total"
	seriesRedisMisses      = "regcache_redis_misses_total"
	seriesEvents           = "regcache_events_total"
)

// buildSeries are regcache_build_info and regcache_start_time_seconds.
func buildSeries(start time.Time) []prometheus.Collector {
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "regcache_build_info", ConstLabels: prometheus.Labels{"version": version.String()},
		Help: "Always 1; the version label is the build's (a release's tag, devel-<commit> for a build from source)."})
	info.Set(1)
	started := prometheus.NewGauge(prometheus.GaugeOpts{Name: seriesStart,
		Help: "When this regcache started, in seconds since the epoch."})
	started.Set(float64(start.UnixNano()) / 1e9)
	return []prometheus.Collector{info, started}
}

// entriesSeries is regcache_cache_entries.
func entriesSeries(c *cache.Cache) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: seriesEntries,
		Help: "Entries held in the cache: tags, manifests, remembered 404s, tags listings, blobs (expired ones until ristretto's cleanup)."},
		func() float64 { return float64(c.Stats().Entries) })
}

var (
	clientRequestsDesc = prometheus.NewDesc(seriesClientRequests,
		"Client requests for the upstream (/v2/ requests routed to it, and image lookups of the digest API), by cache result (none: the cache gave no answer, an error).",
		[]string{"upstream", "cache"}, nil)
	savedDesc = prometheus.NewDesc(seriesSaved,
		"Client requests for the upstream answered HIT: from the cache, without any request to the upstream.", []string{"upstream"}, nil)
	errorsDesc = prometheus.NewDesc(seriesErrors,
		"Upstream operations that failed: no answer, a 5xx, a 429, a failing token endpoint, an answer not to be trusted (404s, denials and requests never sent do not count).",
		[]string{"upstream"}, nil)
	lastErrorDesc = prometheus.NewDesc(seriesLastError,
		"When the upstream's last failed operation ended, in seconds since the epoch; absent before the first.", []string{"upstream"}, nil)
	windowDesc = prometheus.NewDesc(seriesWindow,
		"The window of the RateLimit-* headers last sent by the upstream (w=, Docker Hub: 21600); NaN until seen.", []string{"upstream"}, nil)
)

// upstreamStatusCollector exports the per-upstream series above, read at each scrape.
type upstreamStatusCollector []*Upstream

func (c upstreamStatusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{clientRequestsDesc, savedDesc, errorsDesc, lastErrorDesc, windowDesc} {
		ch <- d
	}
}

func (c upstreamStatusCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c {
		for st := range cache.None + 1 {
			ch <- prometheus.MustNewConstMetric(clientRequestsDesc, prometheus.CounterValue, float64(u.answered[st].Load()), u.Name, st.String())
		}
		ch <- prometheus.MustNewConstMetric(savedDesc, prometheus.CounterValue, float64(u.answered[cache.Hit].Load()), u.Name)
		reg := u.Origin.Registry
		f := reg.Failures()
		ch <- prometheus.MustNewConstMetric(errorsDesc, prometheus.CounterValue, float64(f.Count), u.Name)
		if !f.Time.IsZero() {
			ch <- prometheus.MustNewConstMetric(lastErrorDesc, prometheus.GaugeValue, float64(f.Time.UnixNano())/1e9, u.Name)
		}
		window := math.NaN()
		if rl := reg.RateLimit(); rl.Known && rl.Window > 0 {
			window = rl.Window.Seconds()
		}
		ch <- prometheus.MustNewConstMetric(windowDesc, prometheus.GaugeValue, window, u.Name)
	}
}
