package proxy

// The status page, at / and /status: what regcache saves, per upstream, for someone who
// runs it without Prometheus. Its figures are read from /metrics' own registry (one
// Gather per view), so the page, its JSON form and /metrics never disagree; the texts
// /metrics has no place for (the last error's message, why Redis is down, the last
// changes) come from the same sources the metrics read. HTML for a browser, refreshing
// itself, without JavaScript; JSON for a script (Accept: application/json, or
// ?format=json).

import (
	"bytes"
	_ "embed"
	"html/template"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"regcache/cache"
	"regcache/internal/feed"
	"regcache/internal/version"
)

// statusChanges is how many of the newest change-feed events the page shows.
const statusChanges = 20

// Status is what the status page shows, and its JSON form.
type Status struct {
	Version       string    `json:"version"`
	Started       time.Time `json:"started"`
	UptimeSeconds int64     `json:"uptime_seconds"`
	// Time is when these figures were read.
	Time time.Time `json:"time"`
	// Totals add up the upstreams' figures; UpstreamRequests is every upstream's.
	Totals    Figures          `json:"totals"`
	Upstreams []UpstreamStatus `json:"upstreams"`
	Cache     CacheStatus      `json:"cache"`
	// Redis is absent without the shared tier.
	Redis *RedisStatus `json:"redis,omitempty"`
	// Changes is absent without the change feed.
	Changes *ChangesStatus `json:"changes,omitempty"`
}

// Figures are what an upstream (or all of them) cost and saved.
type Figures struct {
	// ClientRequests is regcache_upstream_client_requests_total, summed over its cache
	// label; ByCache, per value of that label (MISS, HIT, REVALIDATED, STALE, none).
	ClientRequests uint64            `json:"client_requests"`
	ByCache        map[string]uint64 `json:"client_requests_by_cache"`
	// Hits are the HIT requests; HitRatio is Hits over the requests the cache answered
	// (none excluded), null before the first.
	Hits     uint64   `json:"hits"`
	HitRatio *float64 `json:"hit_ratio"`
	// UpstreamRequests is regcache_upstream_requests_total: every exchange with the
	// upstream, tokens, pings and background work included.
	UpstreamRequests uint64 `json:"upstream_requests"`
	// RequestsSaved is regcache_upstream_requests_saved_total: client requests answered
	// without any request to the upstream (the HIT requests).
	RequestsSaved uint64 `json:"requests_saved"`
}

// UpstreamStatus is one upstream's line.
type UpstreamStatus struct {
	Name string `json:"name"`
	Figures
	// Errors is regcache_upstream_errors_total; LastError the last of them, null before.
	Errors    uint64     `json:"errors"`
	LastError *LastError `json:"last_error"`
	// RateLimit is null until the upstream sends RateLimit-* headers.
	RateLimit   *RateLimit `json:"rate_limit"`
	BreakerOpen bool       `json:"breaker_open"`
	HeldBack    bool       `json:"held_back"`
}

// LastError is an upstream's last failed operation. Message never holds credentials (nor
// a token endpoint's own text).
type LastError struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`
	Status  int       `json:"status,omitempty"`
	Message string    `json:"message"`
}

// RateLimit is what the upstream's last RateLimit-* headers said; a figure it did not
// send is null.
type RateLimit struct {
	Remaining     *int64    `json:"remaining"`
	Limit         *int64    `json:"limit"`
	WindowSeconds *int64    `json:"window_seconds"`
	Updated       time.Time `json:"updated"`
}

// CacheStatus is the in-memory cache's fill.
type CacheStatus struct {
	Entries   int64  `json:"entries"`
	SizeBytes int64  `json:"size_bytes"`
	MaxBytes  int64  `json:"max_bytes"`
	Evictions uint64 `json:"evictions"`
}

// RedisStatus is the shared tier's state.
type RedisStatus struct {
	Up bool `json:"up"`
	// DownSince and Reason say since when and why it is down (absent while up).
	DownSince *time.Time `json:"down_since,omitempty"`
	Reason    string     `json:"reason,omitempty"`
	Errors    uint64     `json:"errors"`
	Hits      uint64     `json:"hits"`
	Misses    uint64     `json:"misses"`
}

// ChangesStatus is the change feed: its events counted by type, and the newest ones.
type ChangesStatus struct {
	Total  map[string]uint64 `json:"total"`
	Recent []feed.Event      `json:"recent"`
}

// gathered is one Gather of the metrics registry: the series of each family by name.
type gathered map[string][]*dto.Metric

// sum adds up the series of name whose labels include the pairs given (name, value, ...);
// ok is false when none matched or the sum is NaN (a figure not known yet).
func (g gathered) sum(name string, labels ...string) (v float64, ok bool) {
next:
	for _, m := range g[name] {
		for i := 0; i+1 < len(labels); i += 2 {
			if !hasLabel(m, labels[i], labels[i+1]) {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		default:
			continue
		}
		ok = true
	}
	return v, ok && !math.IsNaN(v)
}

func (g gathered) count(name string, labels ...string) uint64 {
	v, _ := g.sum(name, labels...)
	return uint64(v)
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

// whole is a gauge as a whole number, nil when unknown.
func (g gathered) whole(name string, labels ...string) *int64 {
	if v, ok := g.sum(name, labels...); ok {
		n := int64(v)
		return &n
	}
	return nil
}

// status reads the figures; the metrics registry must be set.
func (p *Proxy) status(now time.Time) *Status {
	families, err := p.metrics.registry.Gather()
	if err != nil {
		// A collector failed; what the others gave is still shown, as /metrics would.
		p.log.Warn("status page: reading metrics", zap.Error(err))
	}
	g := gathered{}
	for _, f := range families {
		g[f.GetName()] = f.Metric
	}
	s := &Status{Version: version.String(), Time: now.UTC(), Started: p.metrics.start.UTC()}
	s.UptimeSeconds = max(int64(now.Sub(s.Started)/time.Second), 0)
	s.Totals.ByCache = map[string]uint64{}
	for _, u := range p.upstreams {
		us := UpstreamStatus{Name: u.Name, Figures: figures(g, "upstream", u.Name)}
		us.Errors = g.count(seriesErrors, "upstream", u.Name)
		if f := u.Origin.Registry.Failures(); !f.Time.IsZero() {
			us.LastError = &LastError{Time: f.Time.UTC(), Kind: f.Kind, Status: f.Status, Message: f.Message}
		}
		rl := &RateLimit{Remaining: g.whole(seriesRemaining, "upstream", u.Name), Limit: g.whole(seriesLimit, "upstream", u.Name),
			WindowSeconds: g.whole(seriesWindow, "upstream", u.Name)}
		if rl.Remaining != nil || rl.Limit != nil {
			rl.Updated = u.Origin.Registry.RateLimit().Updated.UTC()
			us.RateLimit = rl
		}
		us.BreakerOpen = g.count(seriesBreakerOpen, "upstream", u.Name) == 1
		us.HeldBack = g.count(seriesHeldBack, "upstream", u.Name) == 1
		s.Upstreams = append(s.Upstreams, us)
		t := &s.Totals
		t.ClientRequests += us.ClientRequests
		t.Hits += us.Hits
		t.RequestsSaved += us.RequestsSaved
		for k, n := range us.ByCache {
			t.ByCache[k] += n
		}
	}
	s.Totals.UpstreamRequests = g.count(seriesUpstreamRequests)
	s.Totals.HitRatio = hitRatio(s.Totals.ByCache)
	s.Cache = CacheStatus{Entries: int64(g.count(seriesEntries)), SizeBytes: int64(g.count(seriesSize)),
		MaxBytes: int64(g.count(seriesMax)), Evictions: g.count(seriesEvictions)}
	if rs := p.cache.RedisStats(); rs != nil {
		// Up comes from the one read that also gives DownSince and Reason: the gauge, read a
		// moment earlier, may already be out of date.
		r := &RedisStatus{Up: rs.Up, Errors: g.count(seriesRedisErrors),
			Hits: g.count(seriesRedisHits), Misses: g.count(seriesRedisMisses)}
		if !rs.Up {
			since := rs.DownSince.UTC()
			r.DownSince, r.Reason = &since, rs.Reason
		}
		s.Redis = r
	}
	if p.events != nil {
		c := &ChangesStatus{Total: map[string]uint64{}, Recent: p.events.Newest(statusChanges)}
		for _, typ := range []string{feed.TagChanged, feed.TagCreated, feed.TagDeleted} {
			c.Total[typ] = g.count(seriesEvents, "type", typ)
		}
		s.Changes = c
	}
	return s
}

// figures are one upstream's client requests and upstream requests.
func figures(g gathered, labels ...string) Figures {
	f := Figures{ByCache: map[string]uint64{}}
	for st := range cache.None + 1 {
		n := g.count(seriesClientRequests, slices.Concat(labels, []string{"cache", st.String()})...)
		f.ByCache[st.String()] = n
		f.ClientRequests += n
	}
	f.Hits = f.ByCache[cache.Hit.String()]
	f.HitRatio = hitRatio(f.ByCache)
	f.UpstreamRequests = g.count(seriesUpstreamRequests, labels...)
	f.RequestsSaved = g.count(seriesSaved, labels...)
	return f
}

// hitRatio is HIT over the requests the cache answered; nil when it answered none.
func hitRatio(byCache map[string]uint64) *float64 {
	var answered uint64
	for st := range cache.None {
		answered += byCache[st.String()]
	}
	if answered == 0 {
		return nil
	}
	r := float64(byCache[cache.Hit.String()]) / float64(answered)
	return &r
}

// wantsJSON is content negotiation kept simple: JSON when ?format=json, or when Accept
// names application/json with a q above 0 and above text/html's (absent counts 0).
// Anything else, a browser's Accept, curl's */* or none, gets HTML.
func wantsJSON(ctx *fasthttp.RequestCtx) bool {
	if string(ctx.QueryArgs().Peek("format")) == "json" {
		return true
	}
	jsonQ, htmlQ := 0.0, 0.0
	for _, h := range ctx.Request.Header.PeekAll(fasthttp.HeaderAccept) {
		for item := range strings.SplitSeq(string(h), ",") {
			params := strings.Split(item, ";")
			q := 1.0
			for _, p := range params[1:] {
				if v, ok := strings.CutPrefix(strings.TrimSpace(p), "q="); ok {
					if f, err := strconv.ParseFloat(v, 64); err == nil {
						q = f
					}
				}
			}
			switch strings.ToLower(strings.TrimSpace(params[0])) {
			case "application/json":
				jsonQ = max(jsonQ, q)
			case "text/html":
				htmlQ = max(htmlQ, q)
			}
		}
	}
	return jsonQ > 0 && jsonQ > htmlQ
}

//go:embed status.html
var statusHTML string

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"count": formatCount,
	"ratio": func(r *float64) string {
		if r == nil {
			return "–"
		}
		return strconv.FormatFloat(*r*100, 'f', 1, 64) + "%"
	},
	"bytes":    formatBytes,
	"share":    func(a, b int64) string { return strconv.FormatFloat(float64(a)*100/float64(max(b, 1)), 'f', 1, 64) },
	"duration": func(s int64) string { return formatDuration(time.Duration(s) * time.Second) },
	"ago":      ago,
	// time shows a time, or an event's RFC 3339 one, to the second.
	"time": func(t any) string {
		switch v := t.(type) {
		case *time.Time:
			t = *v
		case string:
			p, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return v
			}
			t = p
		}
		return t.(time.Time).UTC().Format("2006-01-02 15:04:05Z")
	},
	// since is an event's RFC 3339 time as an age.
	"since": func(rfc3339 string, now time.Time) string {
		t, err := time.Parse(time.RFC3339, rfc3339)
		if err != nil {
			return ""
		}
		return ago(t, now)
	},
	"short": shortDigest,
}).Parse(statusHTML))

// ago is how long before now t was, to the second.
func ago(t, now time.Time) string { return formatDuration(now.Sub(t).Truncate(time.Second)) + " ago" }

// formatCount writes a count with thousands separated by commas; "?" for a figure not known
// (a nil *int64).
func formatCount(n any) string {
	var s string
	switch v := n.(type) {
	case uint64:
		s = strconv.FormatUint(v, 10)
	case int64:
		s = strconv.FormatInt(v, 10)
	case *int64:
		if v == nil {
			return "?"
		}
		s = strconv.FormatInt(*v, 10)
	default:
		return "?"
	}
	digits := strings.TrimPrefix(s, "-")
	for i := len(digits) - 3; i > 0; i -= 3 {
		digits = digits[:i] + "," + digits[i:]
	}
	return s[:len(s)-len(strings.TrimPrefix(s, "-"))] + digits
}

func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	v, i := float64(n), -1
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + string("KMGTP"[i]) + "iB"
}

// formatDuration is d in its two largest units: "3d 4h", "5m 2s", "40s".
func formatDuration(d time.Duration) string {
	d = max(d, 0)
	parts := []struct {
		n    time.Duration
		unit string
	}{{d / (24 * time.Hour), "d"}, {d / time.Hour % 24, "h"}, {d / time.Minute % 60, "m"}, {d / time.Second % 60, "s"}}
	var out []string
	for i, p := range parts {
		if p.n > 0 || (len(out) == 0 && i == len(parts)-1) {
			out = append(out, strconv.FormatInt(int64(p.n), 10)+p.unit)
		} else if len(out) > 0 {
			break
		}
		if len(out) == 2 {
			break
		}
	}
	return strings.Join(out, " ")
}

// shortDigest is a digest's algorithm and first 12 hex digits.
func shortDigest(d string) string {
	if alg, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return alg + ":" + hex[:12]
	}
	return d
}

func (p *Proxy) serveStatus(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() && !ctx.IsHead() {
		getOrHeadOnly(ctx, "the status page answers GET and HEAD")
		return
	}
	s := p.status(time.Now())
	ctx.Response.Header.Set("Vary", "Accept")
	ctx.Response.Header.Set("Cache-Control", "no-store")
	if wantsJSON(ctx) {
		writeJSON(ctx, s)
		return
	}
	var page bytes.Buffer
	if err := statusPage.Execute(&page, s); err != nil {
		p.log.Error("status page", zap.Error(err))
		writeError(ctx, errUnknown.with("the status page failed; its JSON form is at ?format=json"))
		return
	}
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBody(page.Bytes())
}
