// Command soak runs regcache (the binary given) for a bounded time against an in-process
// upstream that keeps failing in turns (500s, dropped connections, stalls past the
// timeout, healthy again), with mixed hits, misses, blobs, tag lists and bad requests at
// high concurrency. It reports requests served, errors by kind, RSS and goroutines over
// time, goroutines at the end, and checks every manifest and blob it receives against its
// digest and against what upstream holds: one corrupt answer fails the run. scripts/soak.sh
// is the way to run it.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/valyala/fasthttp"
)

var (
	bin      = flag.String("bin", "bench/out/bin/regcache", "regcache binary")
	duration = flag.Duration("d", 120*time.Second, "how long to soak")
	workers  = flag.Int("c", 128, "concurrent clients")
	tags     = flag.Int("tags", 500, "distinct tags (each a distinct image)")
)

// image is what upstream holds under a tag: the truth answers are checked against.
type image struct {
	digest, config string
}

// faultPhase cycles every 10 s: 6 s healthy, 2 s of 500s, 1 s of dropped connections,
// 1 s of stalls past regcache's 1 s upstream timeout.
func faultPhase(start time.Time) string {
	switch s := int(time.Since(start).Seconds()) % 10; {
	case s < 6:
		return "healthy"
	case s < 8:
		return "500"
	case s < 9:
		return "drop"
	}
	return "stall"
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	images := make([]image, *tags)
	for i := range images {
		img, _ := random.Image(256, 1)
		raw, _ := img.RawManifest()
		d, _ := img.Digest()
		cfgName, _ := img.ConfigName()
		cfgRaw, _ := img.RawConfigFile()
		put := func(method, path, ct string, body []byte) {
			req := httptest.NewRequest(method, path, bytes.NewReader(body))
			req.Header.Set("Content-Type", ct)
			rec := httptest.NewRecorder()
			reg.ServeHTTP(rec, req)
			if rec.Code >= 300 {
				log.Fatalf("seed %s: %d", path, rec.Code)
			}
		}
		put(http.MethodPost, fmt.Sprintf("/v2/soak/app/blobs/uploads/?digest=%s", cfgName), "application/octet-stream", cfgRaw)
		put(http.MethodPut, fmt.Sprintf("/v2/soak/app/manifests/t%d", i), string(types.DockerManifestSchema2), raw)
		images[i] = image{digest: d.String(), config: cfgName.String()}
	}
	start := time.Now()
	upstream := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch faultPhase(start) {
		case "500":
			http.Error(w, `{"errors":[{"code":"UNKNOWN","message":"soak fault"}]}`, http.StatusInternalServerError)
			return
		case "drop":
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					_ = c.Close()
				}
				return
			}
		case "stall":
			select {
			case <-time.After(1500 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
		reg.ServeHTTP(w, r)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = upstream.Serve(ln) }()

	// regcache, as a process of its own, so its RSS and goroutines are its own.
	work, _ := os.MkdirTemp("", "regcache-soak-")
	defer os.RemoveAll(work)
	rcAddr, pprofAddr := freeAddr(), freeAddr()
	cfg := filepath.Join(work, "soak.yaml")
	_ = os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: %s
default_upstream: soak.local
cache:
  max_size: 64MiB
  tag_ttl: 2s
  revalidate_wait: 300ms
  negative_ttl: 1s
upstreams:
  - name: soak.local
    url: http://%s
    timeout: 1s
`, rcAddr, ln.Addr())), 0o644)
	rc := exec.Command(*bin, "-config", cfg, "-access-log=false", "-log-level=error", "-pprof", pprofAddr)
	rc.Stderr = os.Stderr
	if err := rc.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = rc.Process.Kill(); _, _ = rc.Process.Wait() }()
	waitUp("http://" + rcAddr + "/healthz")

	hc := &fasthttp.HostClient{Addr: rcAddr, MaxConns: *workers * 2, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		DisablePathNormalizing: true} // send %2f as written
	var served, corrupt atomic.Int64
	var mu sync.Mutex
	byKind := map[string]int{}
	count := func(k string) { mu.Lock(); byKind[k]++; mu.Unlock() }
	deadline := start.Add(*duration)
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(w)))
			zipf := rand.NewZipf(rnd, 1.2, 1, uint64(*tags-1))
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			for time.Now().Before(deadline) {
				i := int(zipf.Uint64())
				op := rnd.Intn(100)
				var path, method, want, kind string
				method = "GET"
				switch {
				case op < 40:
					method, path, want, kind = "HEAD", fmt.Sprintf("/v2/soak/app/manifests/t%d", i), images[i].digest, "head-tag"
				case op < 70:
					path, want, kind = fmt.Sprintf("/v2/soak/app/manifests/t%d", i), images[i].digest, "get-tag"
				case op < 80:
					path, want, kind = "/v2/soak/app/manifests/"+images[i].digest, images[i].digest, "get-digest"
				case op < 88:
					path, want, kind = "/v2/soak/app/blobs/"+images[i].config, images[i].config, "blob"
				case op < 93:
					path, kind = "/v2/soak/app/tags/list?n=100", "tags"
				case op < 96:
					path, kind = fmt.Sprintf("/v2/soak/missing%d/manifests/latest", rnd.Intn(1000)), "miss-404"
				default:
					bad := []string{"/v2/UPPER/manifests/x", "/v2/a/manifests/-bad", "/v2/a%2fb/manifests/x", "/v2/x/manifests/sha256:zz", "/v2/evil.example.com/x/manifests/y"}
					path, kind = bad[rnd.Intn(len(bad))], "bad-request"
				}
				req.Reset()
				req.Header.SetMethod(method)
				req.SetRequestURI("http://" + rcAddr + path)
				resp.SkipBody = method == "HEAD"
				if err := hc.Do(req, resp); err != nil {
					count(kind + " transport-error")
					continue
				}
				served.Add(1)
				status := resp.StatusCode()
				count(fmt.Sprintf("%s %d %s", kind, status, resp.Header.Peek("X-Cache")))
				if status != 200 || want == "" {
					continue
				}
				got := string(resp.Header.Peek("Docker-Content-Digest"))
				if got != want {
					corrupt.Add(1)
					log.Printf("CORRUPT: %s %s answered digest %s, upstream holds %s", method, path, got, want)
				}
				if method == "GET" {
					sum := sha256.Sum256(resp.Body())
					if "sha256:"+hex.EncodeToString(sum[:]) != want {
						corrupt.Add(1)
						log.Printf("CORRUPT: %s %s body does not hash to %s", method, path, want)
					}
				}
			}
		}()
	}
	pid := rc.Process.Pid
	fmt.Printf("soak: %s, %d clients, %d tags, upstream failing in turns (6 s healthy, 2 s 500s, 1 s dropped connections, 1 s stalls)\n\n", *duration, *workers, *tags)
	fmt.Println("| t | served | RSS | goroutines | upstream |")
	fmt.Println("|---|---|---|---|---|")
	for now := time.Now(); now.Before(deadline); now = time.Now() {
		time.Sleep(min(10*time.Second, time.Until(deadline)))
		fmt.Printf("| %3.0fs | %d | %s | %d | %s |\n", time.Since(start).Seconds(), served.Load(), rss(pid, "VmRSS"), goroutines(pprofAddr), faultPhase(start))
	}
	wg.Wait()
	time.Sleep(3 * time.Second) // idle: in-flight work and idle timers settle
	fmt.Printf("\nserved %d requests; peak RSS %s; goroutines after 3 s idle: %d\n\n", served.Load(), rss(pid, "VmHWM"), goroutines(pprofAddr))
	var kinds []string
	for k := range byKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	fmt.Println("| request kind, status, X-Cache | count |")
	fmt.Println("|---|---|")
	for _, k := range kinds {
		fmt.Printf("| %s | %d |\n", k, byKind[k])
	}
	fmt.Printf("\ncorrupt answers: %d\n", corrupt.Load())
	if corrupt.Load() > 0 {
		os.Exit(1)
	}
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitUp(url string) {
	for i := 0; i < 200; i++ {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Fatalf("%s did not come up", url)
}

func rss(pid int, field string) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), field+":") {
			return strings.TrimSpace(strings.TrimPrefix(sc.Text(), field+":"))
		}
	}
	return "?"
}

func goroutines(pprofAddr string) int {
	resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "goroutine profile: total")))
	return n
}
