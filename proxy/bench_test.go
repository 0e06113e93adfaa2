package proxy

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/valyala/fasthttp"

	"regcache/cache"
	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// newBenchProxy wires a proxy in front of a real test registry holding one OCI index.
func newBenchProxy(b *testing.B) (*Proxy, registrytest.Pushed) {
	return newBenchProxySeeded(b, nil)
}

// newBenchProxySeeded is newBenchProxy with more pushed to the registry by seed.
func newBenchProxySeeded(b *testing.B, seed func(*registrytest.Registry)) (*Proxy, registrytest.Pushed) {
	return newBenchProxyWith(b, seed, nil)
}

// newBenchProxyWith is newBenchProxySeeded with an access log (nil: off).
func newBenchProxyWith(b *testing.B, seed func(*registrytest.Registry), access *AccessLog) (*Proxy, registrytest.Pushed) {
	reg := registrytest.New(b, registrytest.Bearer)
	pushed := reg.PushIndex(b, "linuxserver/nginx", "latest", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	if seed != nil {
		seed(reg)
	}
	r, err := upstream.New(upstream.Options{Name: "lscr.io", URL: reg.URL})
	if err != nil {
		b.Fatal(err)
	}
	c, err := cache.New(cache.Config{MaxSize: 64 << 20, MaxStale: time.Hour, NegativeTTL: time.Second, RevalidateWait: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	up := &Upstream{Name: "lscr.io", Origin: &cache.Origin{Registry: r, TagTTL: time.Hour}}
	p, err := New(Options{Upstreams: []*Upstream{up}, Default: "lscr.io", Cache: c, Metrics: NewMetrics(), AccessLog: access})
	if err != nil {
		b.Fatal(err)
	}
	return p, pushed
}

func benchHit(b *testing.B, method, uri string) {
	p, pushed := newBenchProxy(b)
	benchServe(b, p, method, uri, pushed.Digest)
}

// benchServe times p answering method uri from memory, after a warm-up that must leave
// a HIT (carrying digest, when one is given).
func benchServe(b *testing.B, p *Proxy, method, uri, digest string) {
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	req.Header.Set("Accept", upstream.AcceptManifests)
	ctx.Init(&req, nil, nil)
	p.Handler(&ctx) // warm: the miss
	ctx.Response.Reset()
	p.Handler(&ctx)
	if got := string(ctx.Response.Header.Peek("X-Cache")); got != "HIT" {
		b.Fatalf("warm-up left X-Cache %q (status %d)", got, ctx.Response.StatusCode())
	}
	if got := string(ctx.Response.Header.Peek("Docker-Content-Digest")); digest != "" && got != digest {
		b.Fatalf("digest %s, want %s", got, digest)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ctx.Response.Reset()
		p.Handler(&ctx)
	}
	b.StopTimer()
	if ctx.Response.StatusCode() != 200 {
		b.Fatalf("status %d", ctx.Response.StatusCode())
	}
}

// The cache-hit path as clients hit it; figures go in docs/performance.md.
func BenchmarkHitHeadByTag(b *testing.B) {
	benchHit(b, "HEAD", "/v2/linuxserver/nginx/manifests/latest")
}

func BenchmarkHitGetByTag(b *testing.B) {
	benchHit(b, "GET", "/v2/lscr.io/linuxserver/nginx/manifests/latest")
}

// Renovate's form (/<upstream>/v2/...): rewritten into a pooled buffer, still no allocation.
func BenchmarkHitHeadByTagUpstreamFirst(b *testing.B) {
	benchHit(b, "HEAD", "/lscr.io/v2/linuxserver/nginx/manifests/latest")
}

// The hit path with the access log on, as regcache runs by default: the line is encoded
// into the log's buffer (written out here to io.Discard, in the production JSON layout).
func BenchmarkHitHeadByTagAccessLog(b *testing.B) {
	benchHitLogged(b, "HEAD", "/v2/linuxserver/nginx/manifests/latest")
}

func BenchmarkHitGetByTagAccessLog(b *testing.B) {
	benchHitLogged(b, "GET", "/v2/lscr.io/linuxserver/nginx/manifests/latest")
}

func benchHitLogged(b *testing.B, method, uri string) {
	access := NewAccessLog(io.Discard, "json")
	b.Cleanup(func() { _ = access.Close() })
	p, pushed := newBenchProxyWith(b, nil, access)
	benchServe(b, p, method, uri, pushed.Digest)
}

// BenchmarkHitHeadByTagParallel runs the hit path from every P at once: with -cpu 1,2 it
// shows whether hits contend (go test -bench Parallel -cpu 1,2 -mutexprofile m.out ./proxy).
func BenchmarkHitHeadByTagParallel(b *testing.B) {
	p, _ := newBenchProxy(b)
	warm := func() *fasthttp.RequestCtx {
		var ctx fasthttp.RequestCtx
		var req fasthttp.Request
		req.Header.SetMethod("HEAD")
		req.SetRequestURI("/v2/linuxserver/nginx/manifests/latest")
		ctx.Init(&req, nil, nil)
		p.Handler(&ctx)
		return &ctx
	}
	warm()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := warm()
		for pb.Next() {
			ctx.Response.Reset()
			p.Handler(ctx)
			if ctx.Response.StatusCode() != 200 {
				b.Errorf("status %d", ctx.Response.StatusCode())
				return
			}
		}
	})
}

// BenchmarkHitTagsList is a tags list answered from memory: the same page over and over,
// as update checkers ask it (300 tags, What's Up Docker's n=1000 from the start).
func BenchmarkHitTagsList(b *testing.B) {
	p, _ := newBenchProxySeeded(b, func(reg *registrytest.Registry) {
		tags := make([]string, 300)
		for i := range tags {
			tags[i] = fmt.Sprintf("1.%d.%d", i/10, i%10)
		}
		reg.PushTags(b, "linuxserver/nginx", tags)
	})
	benchServe(b, p, "GET", "/v2/lscr.io/linuxserver/nginx/tags/list?n=1000", "")
}
