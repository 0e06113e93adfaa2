// Command load is the benchmark's own load generator and test upstream, for what wrk cannot
// do: HEAD requests (wrk mishandles HEAD answers that carry Content-Length), the cold burst,
// and the fleet profile. Every mode is bounded in time and count and talks to loopback only.
//
//	load http     -url URL [-method HEAD] [-c 64] [-d 3s] [-H 'K: V']     steady load, JSON result
//	load burst    -base URL[,URL...] -path-fmt FMT -tags 50 -clients 1000 [-method HEAD]
//	load upstream -listen ADDR -tags 10000                                 in-memory registry
//	load fleet    -base URL -upstreams a,b,c -tags 10000 -requests 200000
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/valyala/fasthttp"
)

func main() {
	if len(os.Args) < 2 {
		log.Fatal("usage: load http|burst|upstream|fleet [flags]")
	}
	mode, args := os.Args[1], os.Args[2:]
	switch mode {
	case "http":
		runHTTP(args)
	case "burst":
		runBurst(args)
	case "upstream":
		runUpstream(args)
	case "fleet":
		runFleet(args)
	default:
		log.Fatalf("unknown mode %q", mode)
	}
}

type headers []string

func (h *headers) String() string     { return strings.Join(*h, ", ") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

// apply sets every 'Name: value' on a request header.
func (h headers) apply(rh *fasthttp.RequestHeader) {
	for _, kv := range h {
		k, v, _ := strings.Cut(kv, ":")
		rh.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
}

func client(addr string, conns int) *fasthttp.HostClient {
	return &fasthttp.HostClient{Addr: addr, MaxConns: conns, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
}

func hostOf(u string) string {
	u = strings.TrimPrefix(strings.TrimPrefix(u, "http://"), "https://")
	host, _, _ := strings.Cut(u, "/")
	return host
}

// latencies collects per-request durations cheaply: each worker keeps its own slice.
func percentile(all []time.Duration, p float64) time.Duration {
	if len(all) == 0 {
		return 0
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return all[min(len(all)-1, int(float64(len(all))*p))]
}

// runHTTP is a closed-loop load of c connections for d, printing JSON.
func runHTTP(args []string) {
	fs := flag.NewFlagSet("http", flag.ExitOnError)
	url := fs.String("url", "", "URL to request")
	method := fs.String("method", "GET", "GET or HEAD")
	conns := fs.Int("c", 64, "connections")
	dur := fs.Duration("d", 3*time.Second, "duration")
	var hs headers
	fs.Var(&hs, "H", "header 'Name: value' (repeatable)")
	_ = fs.Parse(args)
	hc := client(hostOf(*url), *conns)
	var count, errs atomic.Int64
	var mu sync.Mutex
	var all []time.Duration
	deadline := time.Now().Add(*dur)
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.SetRequestURI(*url)
			req.Header.SetMethod(*method)
			hs.apply(&req.Header)
			if *method == "HEAD" {
				resp.SkipBody = true
			}
			lat := make([]time.Duration, 0, 1<<16)
			for time.Now().Before(deadline) {
				t0 := time.Now()
				err := hc.Do(req, resp)
				lat = append(lat, time.Since(t0))
				if err != nil || resp.StatusCode() >= 400 {
					errs.Add(1)
				}
				count.Add(1)
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	out := map[string]any{
		"requests": count.Load(), "errors": errs.Load(),
		"rps":    float64(count.Load()) / dur.Seconds(),
		"p50_ms": float64(percentile(all, 0.50).Microseconds()) / 1000,
		"p99_ms": float64(percentile(all, 0.99).Microseconds()) / 1000,
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}

// scrapeUpstream sums regcache_upstream_requests_total for kind=manifest by method.
func scrapeUpstream(metricsURL string, hs headers) map[string]float64 {
	req, _ := http.NewRequest(http.MethodGet, metricsURL, nil)
	for _, kv := range hs {
		k, v, _ := strings.Cut(kv, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		log.Fatalf("%s: %s", metricsURL, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "regcache_upstream_requests_total{") || !strings.Contains(line, `kind="manifest"`) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, _ := strconv.ParseFloat(line[i+1:], 64)
		for _, m := range []string{"GET", "HEAD"} {
			if strings.Contains(line, `method="`+m+`"`) {
				out[m] += v
			}
		}
	}
	return out
}

// runBurst fires clients concurrent requests at once, spread over tags cold tags, and
// reports the upstream manifest requests it caused and the latency clients saw.
func runBurst(args []string) {
	fs := flag.NewFlagSet("burst", flag.ExitOnError)
	base := fs.String("base", "http://127.0.0.1:5200", "regcache base URL; several, comma-separated, spread the clients over a fleet")
	pathFmt := fs.String("path-fmt", "/v2/bench/burst/manifests/t%d", "path with %d for the tag number")
	tags := fs.Int("tags", 50, "distinct cold tags")
	offset := fs.Int("offset", 0, "number of the first tag")
	clients := fs.Int("clients", 1000, "concurrent clients")
	method := fs.String("method", "HEAD", "GET or HEAD")
	direct := fs.Bool("direct", false, "base is a registry, not regcache: no /metrics to read")
	var hs headers
	fs.Var(&hs, "H", "header 'Name: value' (repeatable)")
	_ = fs.Parse(args)
	bases := strings.Split(*base, ",")
	scrape := func() map[string]float64 {
		sum := map[string]float64{}
		if *direct {
			return sum
		}
		for _, b := range bases {
			for k, v := range scrapeUpstream(b+"/metrics", hs) {
				sum[k] += v
			}
		}
		return sum
	}
	before := scrape()
	hcs := make([]*fasthttp.HostClient, len(bases))
	for i, b := range bases {
		hcs[i] = client(hostOf(b), *clients)
		hcs[i].MaxIdleConnDuration = time.Minute
	}
	start := make(chan struct{})
	lat := make([]time.Duration, *clients)
	var errs atomic.Int64
	var wg, ready sync.WaitGroup
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			b, hc := bases[i%len(bases)], hcs[i%len(bases)]
			req.SetRequestURI(b + fmt.Sprintf(*pathFmt, *offset+i%*tags))
			req.Header.SetMethod(*method)
			hs.apply(&req.Header)
			resp.SkipBody = *method == "HEAD"
			// Open this client's connection first, so the burst measures regcache and
			// upstream, not 1,000 TCP handshakes on one core.
			warm, wresp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			warm.SetRequestURI(b + "/v2/")
			_ = hc.Do(warm, wresp)
			ready.Done()
			<-start
			t0 := time.Now()
			if err := hc.Do(req, resp); err != nil || resp.StatusCode() != 200 {
				errs.Add(1)
			}
			lat[i] = time.Since(t0)
		}()
	}
	ready.Wait()
	time.Sleep(100 * time.Millisecond) // let every goroutine reach the start line
	close(start)
	wg.Wait()
	after := scrape()
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
		"clients": *clients, "tags": *tags, "errors": errs.Load(),
		"upstream_head": after["HEAD"] - before["HEAD"], "upstream_get": after["GET"] - before["GET"],
		"p50_ms": float64(percentile(lat, 0.5).Microseconds()) / 1000,
		"p99_ms": float64(percentile(lat, 0.99).Microseconds()) / 1000,
		"max_ms": float64(percentile(lat, 1).Microseconds()) / 1000,
	})
}

// runUpstream serves go-containerregistry's in-memory registry with tags tags of one small
// image under fleet/app<N>, seeded in-process (10,000 tags take well under a second).
func runUpstream(args []string) {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:5700", "listen address")
	tags := fs.Int("tags", 10000, "tags to seed")
	repos := fs.Int("repos", 100, "repositories to spread them over")
	_ = fs.Parse(args)
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	img, err := random.Image(512, 1)
	if err != nil {
		log.Fatal(err)
	}
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	for i := 0; i < *tags; i++ {
		req := httptest.NewRequest(http.MethodPut, fmt.Sprintf("/v2/fleet/app%d/manifests/v%d", i%*repos, i), strings.NewReader(string(raw)))
		req.Header.Set("Content-Type", string(mt))
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, req)
		if rec.Code != http.StatusCreated {
			log.Fatalf("seeding tag %d: %d %s", i, rec.Code, rec.Body)
		}
	}
	log.Printf("upstream on %s with %d tags", *listen, *tags)
	log.Fatal(http.ListenAndServe(*listen, reg))
}

// runFleet asks for Zipf-distributed tags across upstreams, as a fleet of update checkers
// does, and reports the hit ratio and upstream requests per 1,000 client requests.
func runFleet(args []string) {
	fs := flag.NewFlagSet("fleet", flag.ExitOnError)
	base := fs.String("base", "http://127.0.0.1:5200", "regcache base URL")
	ups := fs.String("upstreams", "fleet-a.local,fleet-b.local,fleet-c.local", "upstream names")
	tags := fs.Int("tags", 10000, "distinct tags")
	repos := fs.Int("repos", 100, "repositories (as seeded)")
	requests := fs.Int("requests", 200000, "client requests")
	conns := fs.Int("c", 64, "connections")
	s := fs.Float64("zipf-s", 1.1, "Zipf exponent")
	var hs headers
	fs.Var(&hs, "H", "header 'Name: value' (repeatable)")
	_ = fs.Parse(args)
	names := strings.Split(*ups, ",")
	before := scrapeUpstream(*base+"/metrics", hs)
	hc := client(hostOf(*base), *conns)
	var next, hits atomic.Int64
	var errs atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < *conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			z := rand.NewZipf(rand.New(rand.NewSource(int64(w)+1)), *s, 1, uint64(*tags-1))
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.Header.SetMethod("HEAD")
			hs.apply(&req.Header)
			resp.SkipBody = true
			for next.Add(1) <= int64(*requests) {
				i := int(z.Uint64())
				req.SetRequestURI(fmt.Sprintf("%s/v2/%s/fleet/app%d/manifests/v%d", *base, names[i%len(names)], i%*repos, i))
				if err := hc.Do(req, resp); err != nil || resp.StatusCode() != 200 {
					errs.Add(1)
					continue
				}
				if string(resp.Header.Peek("X-Cache")) == "HIT" {
					hits.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(t0)
	after := scrapeUpstream(*base+"/metrics", hs)
	upstream := after["HEAD"] + after["GET"] - before["HEAD"] - before["GET"]
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
		"requests": *requests, "errors": errs.Load(), "seconds": took.Seconds(),
		"hit_ratio":                 float64(hits.Load()) / float64(*requests),
		"upstream_per_1000":         upstream / float64(*requests) * 1000,
		"upstream_manifest_get":     after["GET"] - before["GET"],
		"upstream_manifest_head":    after["HEAD"] - before["HEAD"],
		"distinct_tags_in_universe": *tags,
	})
}
