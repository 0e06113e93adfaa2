// Command run is the benchmark orchestrator behind bench/run.sh. On 127.0.0.1 it starts an
// upstream registry (distribution, seeded); regcache in front of it three ways, each its own
// process on its own port, with metrics and client auth on: with no log flags (the access
// log on, JSON to stderr, kept in a file as a container runtime would), with -log-level
// warn (the access log below the level), and with -access-log=false -log-level=warn (what
// earlier runs measured); and the anchors in front of the same upstream: distribution in
// proxy mode, nginx proxy_cache keyed on URI and Accept, nginx serving the manifest as a
// static file with its access log on and off, and the bare fasthttp ceiling. It loads each
// with the same settings, servers pinned to CPU 0 and the load generator to CPU 1, in
// interleaved rounds, and prints one Markdown table of medians. It also runs the cold burst
// and the fleet profile. Everything it starts, it stops.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

const (
	upstreamAddr         = "127.0.0.1:5100"
	regcacheAddr         = "127.0.0.1:5200"
	regcacheDefaultsAddr = "127.0.0.1:5201"
	regcacheWarnAddr     = "127.0.0.1:5202"
	burstAddr            = "127.0.0.1:5220"
	fleetAddr            = "127.0.0.1:5210"
	distProxy            = "127.0.0.1:5300"
	nginxProxy           = "127.0.0.1:5400"
	nginxStatic          = "127.0.0.1:5500"
	nginxStaticLog       = "127.0.0.1:5501"
	ceilingAddr          = "127.0.0.1:5600"
	fleetUp              = "127.0.0.1:5700"
	benchToken           = "bench-token-0123456789"
	serverCPU            = "0"
	loadCPU              = "1"
)

var (
	bin      = flag.String("bin", "bench/out/bin", "directory with regcache, ceiling, load and registry binaries")
	duration = flag.Duration("d", 2*time.Second, "duration of each load run")
	rounds   = flag.Int("rounds", 3, "interleaved rounds (the median is reported)")
	conns    = flag.Int("c", 64, "connections")
	only     = flag.String("only", "", "comma-separated parts of server names to run, e.g. \"regcache,ceiling\" (default: all); for quick iterations")
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

func run() error {
	for _, tool := range []string{"taskset", "wrk", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: run bench/run.sh, which installs it", tool)
		}
	}
	startUpstream()
	s := seed()
	servers := pick(startServers(s), *only)
	for _, srv := range servers {
		if srv.regcache {
			if err := checkRegcache(srv); err != nil {
				return err
			}
		}
	}
	accept := "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
	scenarios := []scenario{
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
	results := map[key][]result{}
	for r := 0; r < *rounds; r++ {
		for _, sc := range scenarios {
			// Each round starts one server further on, so that no server always follows
			// the same one (and whatever it left behind: a log still being written back).
			for i := range servers {
				srv := servers[(i+r)%len(servers)]
				if sc.name == "tags/list" && srv.manifestOnly {
					continue
				}
				k := key{srv.name, sc.name}
				results[k] = append(results[k], load(sc.method, "http://"+srv.addr+sc.path, accept))
			}
		}
	}
	printTable(scenarios, servers, results)
	printLogs(servers)
	if *profiles {
		runProfiles()
	}
	return nil
}
