package main

// The servers the hit-path table measures: regcache three ways (its log as users run it,
// the log below the level, the access log off), each its own process on its own port, and
// the anchors in front of the same upstream. Every regcache has metrics on (they are always
// counted) and client auth on (a static token); checkRegcache proves both before a run.

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
)

const (
	ceilingName      = "fasthttp ceiling"
	nginxStaticOff   = "nginx static file (access log off)"
	nginxStaticOn    = "nginx static file (access log on)"
	nginxProxyName   = "nginx proxy_cache"
	distProxyName    = "distribution proxy"
	regcacheDefaults = "regcache (defaults)"
)

// server is one row group of the hit-path table.
type server struct {
	name, addr string
	// regcache marks a regcache mode: checked for metrics and client auth, and compared
	// with the ceiling and with anchor, the nginx static file that logs as it does.
	regcache bool
	anchor   string
	// manifestOnly: it serves the manifest and nothing else (no tags/list).
	manifestOnly bool
	// logFile is where its per-request log would go, for the log-size lines; "" for none.
	logFile string
}

// regcacheModes are the three ways regcache is measured, in the table's order.
var regcacheModes = []struct {
	name, addr string
	flags      []string
	anchor     string
}{
	// No log flags: the access log on at info, JSON to stderr, as users run it.
	{regcacheDefaults, regcacheDefaultsAddr, nil, nginxStaticOn},
	// The access log flag at its default (on), but below the level.
	{"regcache (-log-level warn)", regcacheWarnAddr, []string{"-log-level", "warn"}, nginxStaticOff},
	// What every earlier run measured, with exactly its flags.
	{"regcache (-access-log=false)", regcacheAddr, quietFlags, nginxStaticOff},
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

// startRegcache runs regcache with flags and the config file at cfg; its stdout and stderr
// go to its log file under the work directory, as a container runtime would keep them.
func startRegcache(flags []string, cfg string) *exec.Cmd {
	args := append(append([]string{}, flags...), "-config", cfg)
	return start(binary("regcache"), args...)
}

// startUpstream starts the upstream: distribution v3, plain, filesystem storage.
func startUpstream() {
	start(binary("registry"), "serve", writeFile(filepath.Join(work, "upstream.yml"), fmt.Sprintf(`version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: %s/upstream-data}, delete: {enabled: false}}
http: {addr: %s}
`, work, upstreamAddr)))
	waitHTTP("http://" + upstreamAddr + "/v2/")
}

// startServers starts every server in front of the seeded upstream, waits until each
// answers, and returns them in the table's order.
func startServers(s seeded) []server {
	var servers []server
	for _, m := range regcacheModes {
		cfg := writeFile(filepath.Join(work, "regcache-"+m.addr[strings.LastIndexByte(m.addr, ':')+1:]+".yml"),
			regcacheConfig(m.addr, "  - name: bench.local\n    url: http://"+upstreamAddr+"\n", "60s"))
		cmd := startRegcache(m.flags, cfg)
		servers = append(servers, server{name: m.name, addr: m.addr, regcache: true, anchor: m.anchor, logFile: logPath(cmd)})
	}
	// The ceiling: bare fasthttp, same bytes and headers.
	manifestFile := writeFile(filepath.Join(work, "manifest.json"), string(s.indexBody))
	start(binary("ceiling"), "-listen", ceilingAddr, "-manifest", manifestFile, "-digest", s.indexDigest)
	// nginx: the manifest bytes as a static file, with and without an access log, and
	// proxy_cache keyed on URI and Accept.
	accessLog := filepath.Join(work, "nginx-access.log")
	startNginx(s, accessLog)
	// distribution in proxy (pull-through) mode.
	start(binary("registry"), "serve", writeFile(filepath.Join(work, "proxy.yml"), fmt.Sprintf(`version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: %s/proxy-data}, cache: {blobdescriptor: inmemory}}
http: {addr: %s}
proxy: {remoteurl: http://%s}
`, work, distProxy, upstreamAddr)))
	servers = append(servers,
		server{name: ceilingName, addr: ceilingAddr},
		server{name: nginxStaticOn, addr: nginxStaticLog, manifestOnly: true, logFile: accessLog},
		server{name: nginxStaticOff, addr: nginxStatic, manifestOnly: true},
		server{name: nginxProxyName, addr: nginxProxy},
		server{name: distProxyName, addr: distProxy},
	)
	for _, srv := range servers {
		waitHTTP("http://" + srv.addr + "/v2/")
	}
	return servers
}

func startNginx(s seeded, accessLog string) {
	static := filepath.Join(work, "static")
	writeFile(filepath.Join(static, "v2/bench/index/manifests/latest"), string(s.indexBody))
	writeFile(filepath.Join(static, "v2/bench/index/manifests", s.indexDigest), string(s.indexBody))
	staticLocation := fmt.Sprintf(`location / {
      root %s; default_type application/vnd.oci.image.index.v1+json;
      add_header Docker-Content-Digest "%s" always; add_header Docker-Distribution-API-Version registry/2.0 always;
    }`, static, s.indexDigest)
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
    %[5]s
  }
  server {
    listen %[6]s;
    access_log %[7]s combined buffer=64k;
    %[5]s
  }
}`, work, upstreamAddr, nginxProxy, nginxStatic, staticLocation, nginxStaticLog, accessLog)))
}

// checkRegcache proves a regcache has client auth and metrics on: without the token it
// answers 401, and with it /metrics counts requests.
func checkRegcache(srv server) error {
	resp, err := http.Get("http://" + srv.addr + "/v2/")
	if err != nil {
		return fmt.Errorf("%s: %w", srv.name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("%s: /v2/ without a token answered %d, want 401 (client auth off?)", srv.name, resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+srv.addr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+benchToken)
	if resp, err = http.DefaultClient.Do(req); err != nil {
		return fmt.Errorf("%s: %w", srv.name, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "regcache_requests_total") {
		return fmt.Errorf("%s: /metrics answered %d without request counters (metrics off?)", srv.name, resp.StatusCode)
	}
	return nil
}

// pick keeps the servers whose name contains one of only's comma-separated items
// ("regcache" keeps all three modes); all of them when only is empty.
func pick(servers []server, only string) []server {
	if only == "" {
		return servers
	}
	var keep []server
	for _, srv := range servers {
		for _, item := range strings.Split(only, ",") {
			if item = strings.TrimSpace(item); item != "" && strings.Contains(srv.name, item) {
				keep = append(keep, srv)
				break
			}
		}
	}
	return keep
}
