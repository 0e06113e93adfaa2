// Command run is the benchmark orchestrator behind bench/run.sh. On 127.0.0.1 it starts an
// upstream registry (distribution, seeded), regcache in front of it, the anchors in front
// of the same upstream (distribution in proxy mode, nginx proxy_cache keyed on URI and
// Accept, nginx serving the manifest as a static file) and the bare fasthttp ceiling; then
// it loads each with the same settings, servers pinned to CPU 0 and the load generator to
// CPU 1, in interleaved rounds, and prints one Markdown table of medians. It also runs the
// cold burst and the fleet profile. Everything it starts, it stops.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	upstreamAddr = "127.0.0.1:5100"
	regcacheAddr = "127.0.0.1:5200"
	burstAddr    = "127.0.0.1:5220"
	fleetAddr    = "127.0.0.1:5210"
	distProxy    = "127.0.0.1:5300"
	nginxProxy   = "127.0.0.1:5400"
	nginxStatic  = "127.0.0.1:5500"
	ceilingAddr  = "127.0.0.1:5600"
	fleetUp      = "127.0.0.1:5700"
	benchToken   = "bench-token-0123456789"
	serverCPU    = "0"
	loadCPU      = "1"
)

var (
	bin      = flag.String("bin", "bench/out/bin", "directory with regcache, ceiling, load and registry binaries")
	duration = flag.Duration("d", 2*time.Second, "duration of each load run")
	rounds   = flag.Int("rounds", 3, "interleaved rounds (the median is reported)")
	conns    = flag.Int("c", 64, "connections")
	only     = flag.String("only", "", "comma-separated server names to run (default: all); for quick iterations")
	profiles = flag.Bool("profiles", true, "run the cold burst and fleet profiles")
	work     string
	procs    []*exec.Cmd
)

func main() {
	flag.Parse()
	var err error
	if work, err = os.MkdirTemp("", "regcache-bench-"); err != nil {
		log.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; cleanup(); os.Exit(130) }()
	defer cleanup()
	if err := run(); err != nil {
		cleanup()
		log.Fatal(err)
	}
}

// seeded is what the upstream holds that the scenarios ask for.
type seeded struct {
	indexDigest string
	indexBody   []byte
}

func seed() seeded {
	push := func(ref string, img v1.Image) {
		r, _ := name.ParseReference(upstreamAddr+"/"+ref, name.Insecure)
		if err := remote.Write(r, img); err != nil {
			log.Fatalf("seed %s: %v", ref, err)
		}
	}
	img, _ := random.Image(1024, 1)
	// An OCI index of two platforms, a Docker manifest list, a 300-tag repo, 50 burst tags.
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	list := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	for _, arch := range []string{"amd64", "arm64"} {
		child, _ := random.Image(1024, 1)
		ociChild := mutate.ConfigMediaType(mutate.MediaType(child, types.OCIManifestSchema1), types.OCIConfigJSON)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: ociChild, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
		list = mutate.AppendManifests(list, mutate.IndexAddendum{Add: child, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	for _, pair := range []struct {
		ref string
		ix  v1.ImageIndex
	}{{"bench/index:latest", idx}, {"bench/list:latest", list}} {
		r, _ := name.ParseReference(upstreamAddr+"/"+pair.ref, name.Insecure)
		if err := remote.WriteIndex(r, pair.ix); err != nil {
			log.Fatalf("seed %s: %v", pair.ref, err)
		}
	}
	push("bench/tags:t0", img)
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	putTag := func(repo, tag string) {
		req, _ := http.NewRequest(http.MethodPut, "http://"+upstreamAddr+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(raw))
		req.Header.Set("Content-Type", string(mt))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			log.Fatalf("tag %s:%s: %v %v", repo, tag, err, resp)
		}
		resp.Body.Close()
	}
	for i := 1; i < 300; i++ {
		putTag("bench/tags", fmt.Sprintf("t%d", i))
	}
	push("bench/burst:t0", img)
	for i := 1; i < 150; i++ {
		putTag("bench/burst", fmt.Sprintf("t%d", i))
	}
	// 50 tags of 50 different images, for the GET burst: 50 bodies to fetch.
	for i := 0; i < 50; i++ {
		distinct, _ := random.Image(256, 1)
		push(fmt.Sprintf("bench/burstget:t%d", i), distinct)
	}
	body, _ := idx.RawManifest()
	d, _ := idx.Digest()
	return seeded{indexDigest: d.String(), indexBody: body}
}

func regcacheConfig(listen, upstreams string, tagTTL string) string {
	return fmt.Sprintf(`listen: %s
default_upstream: bench.local
cache:
  max_size: 256MiB
  tag_ttl: %s
auth:
  tokens: [%s]
upstreams:
%s`, listen, tagTTL, benchToken, upstreams)
}

func run() error {
	for _, tool := range []string{"taskset", "wrk", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: run bench/run.sh, which installs it", tool)
		}
	}
	b := func(n string) string { return filepath.Join(*bin, n) }

	// The upstream: distribution v3, plain, filesystem storage.
	start(b("registry"), "serve", writeFile(filepath.Join(work, "upstream.yml"), fmt.Sprintf(`version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: %s/upstream-data}, delete: {enabled: false}}
http: {addr: %s}
`, work, upstreamAddr)))
	waitHTTP("http://" + upstreamAddr + "/v2/")
	s := seed()

	// regcache.
	start(b("regcache"), "-access-log=false", "-log-level=warn", "-config", writeFile(filepath.Join(work, "regcache.yml"),
		regcacheConfig(regcacheAddr, "  - name: bench.local\n    url: http://"+upstreamAddr+"\n", "60s")))
	// distribution in proxy (pull-through) mode.
	start(b("registry"), "serve", writeFile(filepath.Join(work, "proxy.yml"), fmt.Sprintf(`version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: %s/proxy-data}, cache: {blobdescriptor: inmemory}}
http: {addr: %s}
proxy: {remoteurl: http://%s}
`, work, distProxy, upstreamAddr)))
	// nginx: proxy_cache keyed on URI and Accept, and the manifest bytes as a static file.
	static := filepath.Join(work, "static")
	writeFile(filepath.Join(static, "v2/bench/index/manifests/latest"), string(s.indexBody))
	writeFile(filepath.Join(static, "v2/bench/index/manifests", s.indexDigest), string(s.indexBody))
	start("nginx", "-p", work, "-c", writeFile(filepath.Join(work, "nginx.conf"), fmt.Sprintf(`
daemon off; worker_processes 1; pid %[1]s/nginx.pid; error_log %[1]s/nginx-error.log error; user root;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 10000000;
  client_body_temp_path %[1]s/tmp; proxy_temp_path %[1]s/tmp; fastcgi_temp_path %[1]s/tmp; uwsgi_temp_path %[1]s/tmp; scgi_temp_path %[1]s/tmp;
  proxy_cache_path %[1]s/nginx-cache levels=1:2 keys_zone=reg:10m max_size=100m inactive=60m use_temp_path=off;
  upstream reg { server %[2]s; keepalive 64; }
  server {
    listen %[3]s;
    location /v2/ {
      proxy_pass http://reg; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache reg; proxy_cache_key "$request_uri|$http_accept"; proxy_cache_valid 200 60s;
    }
  }
  server {
    listen %[4]s;
    location / {
      root %[5]s; default_type application/vnd.oci.image.index.v1+json;
      add_header Docker-Content-Digest "%[6]s" always; add_header Docker-Distribution-API-Version registry/2.0 always;
    }
  }
}`, work, upstreamAddr, nginxProxy, nginxStatic, static, s.indexDigest)))
	// The ceiling: bare fasthttp, same bytes and headers.
	manifestFile := writeFile(filepath.Join(work, "manifest.json"), string(s.indexBody))
	start(b("ceiling"), "-listen", ceilingAddr, "-manifest", manifestFile, "-digest", s.indexDigest)
	for _, a := range []string{regcacheAddr, distProxy, nginxProxy, nginxStatic, ceilingAddr} {
		waitHTTP("http://" + a + "/v2/")
	}

	servers := []struct{ name, addr string }{
		{"regcache", regcacheAddr}, {"fasthttp ceiling", ceilingAddr}, {"nginx static file", nginxStatic},
		{"nginx proxy_cache", nginxProxy}, {"distribution proxy", distProxy},
	}
	if *only != "" {
		var keep []struct{ name, addr string }
		for _, srv := range servers {
			if strings.Contains(","+*only+",", ","+srv.name+",") {
				keep = append(keep, srv)
			}
		}
		servers = keep
	}
	accept := "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
	scenarios := []struct{ name, method, path string }{
		{"HEAD by tag", "HEAD", "/v2/bench/index/manifests/latest"},
		{"GET by tag", "GET", "/v2/bench/index/manifests/latest"},
		{"GET by digest", "GET", "/v2/bench/index/manifests/" + s.indexDigest},
		{"tags/list", "GET", "/v2/bench/tags/tags/list?n=1000"},
	}
	// Warm every server's cache once.
	for _, srv := range servers {
		for _, sc := range scenarios {
			req, _ := http.NewRequest(sc.method, "http://"+srv.addr+sc.path, nil)
			req.Header.Set("Accept", accept)
			req.Header.Set("Authorization", "Bearer "+benchToken)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}
	type key struct{ server, scenario string }
	results := map[key][]result{}
	for r := 0; r < *rounds; r++ {
		for _, sc := range scenarios {
			for _, srv := range servers {
				if sc.name == "tags/list" && strings.HasPrefix(srv.name, "nginx static") {
					continue // the static file is the manifest only
				}
				res := load(sc.method, "http://"+srv.addr+sc.path, accept)
				results[key{srv.name, sc.name}] = append(results[key{srv.name, sc.name}], res)
			}
		}
	}
	fmt.Printf("\n### Hit path, %d connections, %s per run, median of %d interleaved rounds\n\n", *conns, *duration, *rounds)
	fmt.Println("| scenario | server | req/s | p50 ms | p99 ms | req/s vs regcache | p99 vs regcache |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, sc := range scenarios {
		ref := median(results[key{"regcache", sc.name}])
		for _, srv := range servers {
			rs, ok := results[key{srv.name, sc.name}]
			if !ok {
				continue
			}
			m := median(rs)
			fmt.Printf("| %s | %s | %.0f | %.3f | %.3f | %.2fx | %.2fx |\n", sc.name, srv.name, m.rps, m.p50, m.p99, m.rps/ref.rps, m.p99/ref.p99)
		}
	}

	if !*profiles {
		return nil
	}
	// Cold burst: a fresh regcache, 1,000 clients on 50 cold tags at once.
	start(b("regcache"), "-access-log=false", "-log-level=warn", "-config", writeFile(filepath.Join(work, "burst.yml"),
		regcacheConfig(burstAddr, "  - name: bench.local\n    url: http://"+upstreamAddr+"\n", "60s")))
	waitHTTP("http://" + burstAddr + "/healthz")
	fmt.Printf("\n### Cold burst: 1,000 concurrent clients, 50 cold tags\n\n")
	one := time.Now()
	if resp, err := http.Head("http://" + upstreamAddr + "/v2/bench/burst/manifests/t0"); err == nil {
		resp.Body.Close()
	}
	fmt.Printf("- one upstream HEAD round trip, unloaded: %.3f ms\n", float64(time.Since(one).Microseconds())/1000)
	// The same 50 HEADs sent straight to the upstream, all at once: the round trip the
	// burst's upstream requests can take on this machine.
	out := loadTool("burst", "-direct", "-base", "http://"+upstreamAddr, "-path-fmt", "/v2/bench/burst/manifests/t%d", "-tags", "50", "-clients", "50", "-method", "HEAD")
	fmt.Printf("- 50 concurrent HEADs straight to the upstream: %s\n", strings.TrimSpace(out))
	for _, b := range []struct{ what, method, path, offset, clients string }{
		{"1,000 HEAD clients, 50 cold tags, first contact (regcache opens its upstream connections)", "HEAD", "/v2/bench/burst/manifests/t%d", "0", "1000"},
		{"1,000 HEAD clients, 50 other cold tags, connections open", "HEAD", "/v2/bench/burst/manifests/t%d", "50", "1000"},
		{"50 HEAD clients, 50 more cold tags", "HEAD", "/v2/bench/burst/manifests/t%d", "100", "50"},
		{"1,000 GET clients, 50 cold tags of 50 different images", "GET", "/v2/bench/burstget/manifests/t%d", "0", "1000"},
	} {
		out := loadTool("burst", "-base", "http://"+burstAddr, "-path-fmt", b.path, "-offset", b.offset, "-tags", "50", "-clients", b.clients, "-method", b.method, "-H", "Authorization: Bearer "+benchToken)
		fmt.Printf("- %s: %s\n", b.what, strings.TrimSpace(out))
	}

	// Fleet: 10,000 tags across 3 upstreams, Zipf, tag_ttl 60 s.
	start(b("load"), "upstream", "-listen", fleetUp, "-tags", "10000")
	waitHTTP("http://" + fleetUp + "/v2/")
	var ups strings.Builder
	for _, n := range []string{"fleet-a.local", "fleet-b.local", "fleet-c.local"} {
		fmt.Fprintf(&ups, "  - name: %s\n    url: http://%s\n", n, fleetUp)
	}
	fleetCfg := strings.Replace(regcacheConfig(fleetAddr, ups.String(), "60s"), "default_upstream: bench.local", "default_upstream: fleet-a.local", 1)
	fleet := start(b("regcache"), "-access-log=false", "-log-level=warn", "-config", writeFile(filepath.Join(work, "fleet.yml"), fleetCfg))
	waitHTTP("http://" + fleetAddr + "/healthz")
	out = loadTool("fleet", "-base", "http://"+fleetAddr, "-tags", "10000", "-requests", "300000", "-H", "Authorization: Bearer "+benchToken)
	fmt.Printf("\n### Fleet profile: 10,000 tags over 3 upstreams, Zipf s=1.1, 300,000 HEADs, tag_ttl 60s\n\n- %s\n", strings.TrimSpace(out))
	fmt.Printf("- regcache peak RSS: %s (cache.max_size 256 MiB)\n", peakRSS(fleet))
	return nil
}
