package main

// The profiles after the hit-path table: the cold burst (a fresh regcache, many clients on
// cold tags at once) and the fleet (10,000 tags over 3 upstreams, Zipf). Both run regcache
// with the hit-path table's "-access-log=false" flags.

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"
)

// quietFlags are regcache's flags for the profiles and the "-access-log=false" mode of the
// hit-path table: the flags every earlier bench run used, so old figures stay comparable.
var quietFlags = []string{"-access-log=false", "-log-level=warn"}

func runProfiles() {
	coldBurst()
	fleetProfile()
}

// coldBurst: a fresh regcache, 1,000 clients on 50 cold tags at once.
func coldBurst() {
	startRegcache(quietFlags, writeFile(filepath.Join(work, "burst.yml"),
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
}

// fleetProfile: 10,000 tags across 3 upstreams, Zipf, tag_ttl 60 s.
func fleetProfile() {
	start(binary("load"), "upstream", "-listen", fleetUp, "-tags", "10000")
	waitHTTP("http://" + fleetUp + "/v2/")
	var ups strings.Builder
	for _, n := range []string{"fleet-a.local", "fleet-b.local", "fleet-c.local"} {
		fmt.Fprintf(&ups, "  - name: %s\n    url: http://%s\n", n, fleetUp)
	}
	fleetCfg := strings.Replace(regcacheConfig(fleetAddr, ups.String(), "60s"), "default_upstream: bench.local", "default_upstream: fleet-a.local", 1)
	fleet := startRegcache(quietFlags, writeFile(filepath.Join(work, "fleet.yml"), fleetCfg))
	waitHTTP("http://" + fleetAddr + "/healthz")
	out := loadTool("fleet", "-base", "http://"+fleetAddr, "-tags", "10000", "-requests", "300000", "-H", "Authorization: Bearer "+benchToken)
	fmt.Printf("\n### Fleet profile: 10,000 tags over 3 upstreams, Zipf s=1.1, 300,000 HEADs, tag_ttl 60s\n\n- %s\n", strings.TrimSpace(out))
	fmt.Printf("- regcache peak RSS: %s (cache.max_size 256 MiB)\n", peakRSS(fleet))
}
