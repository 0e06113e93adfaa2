// Package deploy holds the deployment examples (docker-compose.yml, kubernetes/); this test
// keeps them valid: every document parses, the regcache configs in them load exactly as
// regcache would load them, and the names that tie the objects together match.
package deploy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"

	"regcache/configs"
)

// obj is one Kubernetes object, decoded loosely: tests walk it by key.
type obj map[string]any

func (o obj) str(keys ...string) string {
	v := o.get(keys...)
	switch v := v.(type) {
	case string:
		return v
	case int:
		return strconv.Itoa(v)
	}
	return ""
}

func (o obj) get(keys ...string) any {
	var cur any = map[string]any(o)
	for _, k := range keys {
		switch c := cur.(type) {
		case obj: // yaml decodes nested mappings into the named type too
			cur = c[k]
		case map[string]any:
			cur = c[k]
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i >= len(c) {
				return nil
			}
			cur = c[i]
		default:
			return nil
		}
	}
	return cur
}

func (o obj) sub(keys ...string) obj {
	switch m := o.get(keys...).(type) {
	case obj:
		return m
	case map[string]any:
		return obj(m)
	}
	return nil
}

func (o obj) list(keys ...string) []obj {
	var out []obj
	l, _ := o.get(keys...).([]any)
	for _, item := range l {
		switch m := item.(type) {
		case obj:
			out = append(out, m)
		case map[string]any:
			out = append(out, obj(m))
		}
	}
	return out
}

func readDocs(t *testing.T, file string) []obj {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []obj
	for {
		var o obj
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d does not parse: %v", file, len(docs)+1, err)
		}
		if o != nil {
			docs = append(docs, o)
		}
	}
	return docs
}

func find(t *testing.T, docs []obj, kind, name string) obj {
	t.Helper()
	for _, o := range docs {
		if o.str("kind") == kind && o.str("metadata", "name") == name {
			return o
		}
	}
	t.Fatalf("no %s named %q", kind, name)
	return nil
}

func sameLabels(a, b obj) bool {
	if len(a) == 0 {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// redisHostPort is cache.redis.addr of a config, which must be set.
func redisHostPort(t *testing.T, what string, cfg *configs.Config) (string, string) {
	t.Helper()
	if cfg.Cache.Redis == nil {
		t.Fatalf("%s: no cache.redis", what)
	}
	host, port, err := net.SplitHostPort(cfg.Cache.Redis.Addr)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

func TestKubernetesExample(t *testing.T) {
	docs := readDocs(t, "kubernetes/regcache.yaml")
	for i, o := range docs {
		if o.str("apiVersion") == "" || o.str("kind") == "" || o.str("metadata", "name") == "" {
			t.Fatalf("document %d lacks apiVersion, kind or metadata.name", i+1)
		}
	}
	cm := find(t, docs, "ConfigMap", "regcache-config")
	dep := find(t, docs, "Deployment", "regcache")
	svc := find(t, docs, "Service", "regcache")
	sts := find(t, docs, "StatefulSet", "regcache-valkey")
	vsvc := find(t, docs, "Service", "regcache-valkey")
	np := find(t, docs, "NetworkPolicy", "regcache-valkey")

	if n, _ := dep.get("spec", "replicas").(int); n != 3 {
		t.Fatalf("Deployment replicas %v, want 3", dep.get("spec", "replicas"))
	}
	podLabels := dep.sub("spec", "template", "metadata", "labels")
	if !sameLabels(dep.sub("spec", "selector", "matchLabels"), podLabels) || !sameLabels(svc.sub("spec", "selector"), podLabels) {
		t.Fatal("the Deployment's selector or the Service's does not match the pod labels")
	}
	c := dep.list("spec", "template", "spec", "containers")[0]
	ports := map[string]string{}
	for _, p := range c.list("ports") {
		ports[p.str("name")] = p.str("containerPort")
	}
	if ports[svc.list("spec", "ports")[0].str("targetPort")] == "" {
		t.Fatal("the Service's targetPort names no container port")
	}
	if c.str("readinessProbe", "httpGet", "path") != "/readyz" || c.str("livenessProbe", "httpGet", "path") != "/healthz" {
		t.Fatal("readiness must be /readyz and liveness /healthz")
	}

	// The config file regcache is told to read is the ConfigMap's key, mounted.
	args := c.get("args").([]any)
	if len(args) != 2 || args[0] != "-config" {
		t.Fatalf("container args %v, want -config <file>", args)
	}
	file := args[1].(string)
	var mounted bool
	for _, m := range c.list("volumeMounts") {
		for _, v := range dep.list("spec", "template", "spec", "volumes") {
			if v.str("name") == m.str("name") && v.str("configMap", "name") == cm.str("metadata", "name") &&
				path.Dir(file) == strings.TrimSuffix(m.str("mountPath"), "/") {
				if _, ok := cm.sub("data")[path.Base(file)]; ok {
					mounted = true
				}
			}
		}
	}
	if !mounted {
		t.Fatalf("-config %s is not a key of ConfigMap %s mounted at its directory", file, cm.str("metadata", "name"))
	}
	cfg, err := configs.Parse([]byte(cm.str("data", path.Base(file))))
	if err != nil {
		t.Fatalf("the ConfigMap's regcache.yaml does not load: %v", err)
	}
	_, listenPort, _ := net.SplitHostPort(cfg.Listen)
	if listenPort != ports["http"] {
		t.Fatalf("regcache listens on %s, the container port is %s", listenPort, ports["http"])
	}
	// The probes reach the listener that serves them open (/healthz and /readyz need no
	// credentials even with auth on); Prometheus scrapes metrics_listen, which needs none
	// either (on listen, /metrics is behind auth when auth is on).
	for _, probe := range []string{"readinessProbe", "livenessProbe"} {
		if p := containerPort(ports, c.str(probe, "httpGet", "port")); p != listenPort {
			t.Fatalf("the %s's port %q is container port %q, regcache listens on %s", probe, c.str(probe, "httpGet", "port"), p, listenPort)
		}
	}
	if cfg.MetricsListen == "" {
		t.Fatal("the example sets no metrics_listen: with auth on, Prometheus would scrape 401s")
	}
	_, metricsPort, _ := net.SplitHostPort(cfg.MetricsListen)
	ann := dep.sub("spec", "template", "metadata", "annotations")
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/path"] != "/metrics" || ann["prometheus.io/port"] != metricsPort {
		t.Fatalf("Prometheus annotations %v do not point at /metrics on metrics_listen's port %s", ann, metricsPort)
	}
	if containerPort(ports, metricsPort) != metricsPort {
		t.Fatalf("metrics_listen's port %s is no container port (%v)", metricsPort, ports)
	}

	// cache.redis.addr is the Valkey Service, whose selector finds the StatefulSet's pods
	// and whose port reaches Valkey's container port.
	host, port := redisHostPort(t, "ConfigMap", cfg)
	if host != vsvc.str("metadata", "name") && !strings.HasPrefix(host, vsvc.str("metadata", "name")+".") {
		t.Fatalf("cache.redis.addr host %q is not the Valkey Service %q", host, vsvc.str("metadata", "name"))
	}
	vp := vsvc.list("spec", "ports")[0]
	if vp.str("port") != port {
		t.Fatalf("cache.redis.addr port %s, the Valkey Service's port %s", port, vp.str("port"))
	}
	vLabels := sts.sub("spec", "template", "metadata", "labels")
	if !sameLabels(vsvc.sub("spec", "selector"), vLabels) || !sameLabels(sts.sub("spec", "selector", "matchLabels"), vLabels) ||
		sts.str("spec", "serviceName") != vsvc.str("metadata", "name") {
		t.Fatal("the Valkey Service or StatefulSet selectors do not match its pods")
	}
	vc := sts.list("spec", "template", "spec", "containers")[0]
	var vPortOK bool
	for _, p := range vc.list("ports") {
		if p.str("name") == vp.str("targetPort") || p.str("containerPort") == vp.str("targetPort") {
			vPortOK = p.str("containerPort") == "6379"
		}
	}
	if !vPortOK {
		t.Fatal("the Valkey Service's targetPort does not reach container port 6379")
	}
	if !sameLabels(np.sub("spec", "podSelector", "matchLabels"), vLabels) ||
		!sameLabels(np.list("spec", "ingress")[0].list("from")[0].sub("podSelector", "matchLabels"), podLabels) {
		t.Fatal("the NetworkPolicy must admit regcache's pods to Valkey's")
	}
	valkeyArgs := strings.Join(strings.Fields(strings.Trim(strings.ReplaceAll(toString(vc.get("args")), ",", " "), "[]")), " ")
	if !strings.Contains(valkeyArgs, "volatile-lru") || !strings.Contains(valkeyArgs, "--maxmemory") {
		t.Fatalf("Valkey runs without a memory cap and LRU eviction of the keys that expire: %s", valkeyArgs)
	}
}

// containerPort resolves a probe's port, a name or a number, to a container port number;
// "" if the container has no such port.
func containerPort(ports map[string]string, port string) string {
	if n, ok := ports[port]; ok {
		return n
	}
	for _, n := range ports {
		if n == port {
			return n
		}
	}
	return ""
}

func toString(v any) string {
	out, _ := yaml.Marshal(v)
	return string(out)
}

func TestComposeExample(t *testing.T) {
	docs := readDocs(t, "docker-compose.yml")
	if len(docs) != 1 {
		t.Fatalf("%d documents, want 1", len(docs))
	}
	services := docs[0].sub("services")
	rc, valkey := services.sub("regcache"), services.sub("valkey")
	if rc == nil || valkey == nil {
		t.Fatalf("services %v, want regcache and valkey", services)
	}
	cmd := rc.get("command").([]any)
	if len(cmd) != 2 || cmd[0] != "-config" {
		t.Fatalf("regcache command %v, want -config <file>", cmd)
	}
	var src string
	for _, v := range rc.get("volumes").([]any) {
		parts := strings.Split(v.(string), ":")
		if len(parts) >= 2 && parts[1] == cmd[1] {
			src = parts[0]
		}
	}
	if src == "" {
		t.Fatalf("no volume mounts the config file %s", cmd[1])
	}
	cfg, err := configs.Load(src) // relative to deploy/, as compose reads it
	if err != nil {
		t.Fatalf("the compose config does not load: %v", err)
	}
	host, _ := redisHostPort(t, src, cfg)
	if services.sub(host) == nil {
		t.Fatalf("cache.redis.addr host %q is no compose service", host)
	}
	deps, _ := rc.get("depends_on").([]any)
	if len(deps) != 1 || deps[0] != host {
		t.Fatalf("regcache depends_on %v, want [%s]", deps, host)
	}
	_, listenPort, _ := net.SplitHostPort(cfg.Listen)
	published := rc.get("ports").([]any)[0].(string)
	if !strings.HasSuffix(published, ":"+listenPort) {
		t.Fatalf("published port %s does not reach regcache's listen port %s", published, listenPort)
	}
	if !strings.Contains(toString(valkey.get("command")), "volatile-lru") {
		t.Fatal("Valkey runs without LRU eviction of the keys that expire")
	}
	if b := rc.str("build"); b != ".." {
		t.Fatalf("build context %q, want .. (the repository root, where the Dockerfile is)", b)
	}
	if _, err := os.Stat(path.Join(rc.str("build"), "Dockerfile")); err != nil {
		t.Fatal(err)
	}
}

// TestKubernetesConfigMatchesCompose: the two examples carry the same regcache config but
// for the Valkey address, so that a fix to one is not forgotten in the other.
func TestKubernetesConfigMatchesCompose(t *testing.T) {
	compose, err := configs.Load("regcache.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cm := find(t, readDocs(t, "kubernetes/regcache.yaml"), "ConfigMap", "regcache-config")
	k8s, err := configs.Parse([]byte(cm.str("data", "regcache.yaml")))
	if err != nil {
		t.Fatal(err)
	}
	compose.Cache.Redis.Addr, k8s.Cache.Redis.Addr = "", ""
	a, b := toString(compose), toString(k8s)
	if a != b {
		t.Fatalf("the Kubernetes ConfigMap and deploy/regcache.yaml differ beyond cache.redis.addr:\n%s\n---\n%s", a, b)
	}
}

// TestSnapshotOnAVolume: in both examples, cache.snapshot's file lies in a writable volume
// (on the read-only root filesystem, or the container's own layer, every save would fail
// or be lost with the container).
func TestSnapshotOnAVolume(t *testing.T) {
	compose, err := configs.Load("regcache.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if compose.Cache.Snapshot == nil {
		t.Fatal("the compose config sets no cache.snapshot")
	}
	dir := path.Dir(compose.Cache.Snapshot.Path)
	docs := readDocs(t, "docker-compose.yml")
	var named string
	for _, v := range docs[0].sub("services", "regcache").get("volumes").([]any) {
		parts := strings.Split(v.(string), ":")
		if len(parts) == 2 && parts[1] == dir {
			named = parts[0]
		}
	}
	if _, ok := docs[0].sub("volumes")[named]; named == "" || !ok {
		t.Fatalf("no named, writable volume is mounted at %s (the snapshot's directory)", dir)
	}

	cm := find(t, readDocs(t, "kubernetes/regcache.yaml"), "ConfigMap", "regcache-config")
	k8s, err := configs.Parse([]byte(cm.str("data", "regcache.yaml")))
	if err != nil {
		t.Fatal(err)
	}
	if k8s.Cache.Snapshot == nil || k8s.Cache.Snapshot.Path != compose.Cache.Snapshot.Path {
		t.Fatal("the ConfigMap's cache.snapshot differs from the compose config's")
	}
	dep := find(t, readDocs(t, "kubernetes/regcache.yaml"), "Deployment", "regcache")
	var mounted bool
	for _, m := range dep.list("spec", "template", "spec", "containers")[0].list("volumeMounts") {
		if m.str("mountPath") != dir || m.get("readOnly") == true {
			continue
		}
		for _, v := range dep.list("spec", "template", "spec", "volumes") {
			if v.str("name") == m.str("name") && (v.get("emptyDir") != nil || v.get("persistentVolumeClaim") != nil) {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Fatalf("no writable volume (emptyDir or claim) is mounted at %s in the Deployment", dir)
	}
}
