package main

// Real clients drive regcache: go-containerregistry's remote (crane's engine) and
// containerd's resolver as libraries, and the crane, skopeo and regctl CLIs (skipped, with
// what to install, where they are missing).

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// startForClients starts one upstream (Bearer auth, like ghcr) with an index, an image and
// a 300-tag repository, behind a regcache; the clients reach it in the path-prefix form,
// at host.
func startForClients(t *testing.T) (host string, idx, img registrytest.Pushed, tags []string) {
	reg := registrytest.New(t, registrytest.Bearer)
	idx = reg.PushIndex(t, "linuxserver/nginx", "latest", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	img = reg.PushImage(t, "linuxserver/nginx", "1.27", types.DockerManifestSchema2)
	tags = harness.TagNames(300)
	reg.PushTags(t, "linuxserver/tags", tags)
	reg.SetPaging(registrytest.PagingLink, 100)
	rc := startRegcache(t, harness.Config("", harness.Upstream("lscr.io", reg.URL)))
	return strings.TrimPrefix(rc.URL, "http://"), idx, img, tags
}

// TestGoContainerregistryClient drives regcache with go-containerregistry's remote package,
// crane's engine, in the path-prefix form: digests, a 300-tag list and a full pull whose
// every layer and config is verified by ggcr itself.
func TestGoContainerregistryClient(t *testing.T) {
	t.Parallel()
	host, idx, img, want := startForClients(t)

	ref, err := name.ParseReference(host+"/lscr.io/linuxserver/nginx:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(ref)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != idx.Digest || string(desc.MediaType) != idx.MediaType {
		t.Fatalf("HEAD via ggcr: %s %s, want %s", desc.Digest, desc.MediaType, idx.Digest)
	}
	got, err := remote.Get(ref)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest.String() != idx.Digest || string(got.Manifest) != string(idx.Body) {
		t.Fatal("GET via ggcr: digest or bytes differ from upstream")
	}

	// A full pull (crane pull): manifest, config and layers, all verified by ggcr.
	ref127, _ := name.ParseReference(host+"/lscr.io/linuxserver/nginx:1.27", name.Insecure)
	pulled, err := remote.Image(ref127)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := pulled.Digest(); d.String() != img.Digest {
		t.Fatalf("pulled image digest %s, want %s", d, img.Digest)
	}
	if err := validate.Image(pulled); err != nil {
		t.Fatalf("pulled image does not validate: %v", err)
	}
	index, err := remote.Index(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(index); err != nil {
		t.Fatalf("pulled index does not validate: %v", err)
	}

	// Tags: ggcr's List follows Link headers; every tag exactly once.
	repo, _ := name.NewRepository(host+"/lscr.io/linuxserver/tags", name.Insecure)
	tags, err := remote.List(repo, remote.WithPageSize(70))
	if err != nil {
		t.Fatal(err)
	}
	harness.ExpectEachTagOnce(t, tags, want)
}

// TestContainerdResolver drives regcache with containerd's own resolver, configured by a
// hosts.toml that makes regcache a mirror of lscr.io: containerd then sends ?ns=lscr.io.
// The hosts.toml server is an unreachable loopback port, so a resolver that fell back to
// it would fail rather than pass without regcache.
func TestContainerdResolver(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	idx := reg.PushIndex(t, "linuxserver/nginx", "latest", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	// The default upstream is another, empty registry: only ?ns=lscr.io finds the image.
	hub := registrytest.New(t, registrytest.NoAuth)
	rc := startRegcache(t, harness.Config("", harness.Upstream("docker.io", hub.URL), harness.Upstream("lscr.io", reg.URL)))

	root := t.TempDir()
	dir := filepath.Join(root, "lscr.io")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	hostsToml := "server = \"http://127.0.0.1:9\"\n\n[host.\"" + rc.URL + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hostsToml), 0o644); err != nil {
		t.Fatal(err)
	}
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: config.ConfigureHosts(context.Background(), config.HostOptions{HostDir: config.HostDirFromRoot(root)}),
	})
	ctx := context.Background()
	_, desc, err := resolver.Resolve(ctx, "lscr.io/linuxserver/nginx:latest")
	if err != nil {
		t.Fatalf("resolve through regcache: %v\n%s", err, rc.Logs.String())
	}
	if desc.Digest.String() != idx.Digest || desc.MediaType != idx.MediaType || desc.Size != int64(len(idx.Body)) {
		t.Fatalf("resolved %v, want %s (%d bytes)", desc, idx.Digest, len(idx.Body))
	}
	if !strings.Contains(rc.Logs.String(), `"path":"/v2/linuxserver/nginx/manifests/latest"`) {
		t.Fatal("containerd did not ask regcache in the mirror form")
	}

	fetcher, err := resolver.Fetcher(ctx, "lscr.io/linuxserver/nginx:latest")
	if err != nil {
		t.Fatal(err)
	}
	rcIdx, err := fetcher.Fetch(ctx, desc)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(rcIdx)
	rcIdx.Close()
	if string(body) != string(idx.Body) {
		t.Fatal("index bytes differ from upstream's")
	}
	var index ocispec.Index
	if err := json.Unmarshal(body, &index); err != nil {
		t.Fatal(err)
	}
	// Fetch each platform manifest and its config blob, as a pull would.
	var platforms []string
	for _, m := range index.Manifests {
		r, err := fetcher.Fetch(ctx, m)
		if err != nil {
			t.Fatalf("fetch %s: %v", m.Digest, err)
		}
		var man ocispec.Manifest
		err = json.NewDecoder(r).Decode(&man)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		cr, err := fetcher.Fetch(ctx, man.Config)
		if err != nil {
			t.Fatalf("fetch config %s: %v", man.Config.Digest, err)
		}
		var cfg ocispec.Image
		err = json.NewDecoder(cr).Decode(&cfg)
		cr.Close()
		if err != nil {
			t.Fatal(err)
		}
		platforms = append(platforms, cfg.OS+"/"+cfg.Architecture)
	}
	sort.Strings(platforms)
	if strings.Join(platforms, ",") != "linux/amd64,linux/arm64" {
		t.Fatalf("platform configs read through regcache: %v", platforms)
	}
	if hub.Count("GET", "manifest")+hub.Count("HEAD", "manifest") != 0 {
		t.Fatal("containerd's requests reached the default upstream: ns was not used")
	}
	if strings.Contains(rc.Logs.String(), `"status":5`) {
		t.Fatal("regcache answered a 5xx to containerd")
	}
}

func TestCLICrane(t *testing.T) {
	crane := harness.Tool(t, "crane", "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1")
	t.Parallel()
	host, idx, img, tags := startForClients(t)
	if d := strings.TrimSpace(harness.RunTool(t, nil, crane, "digest", "--insecure", host+"/lscr.io/linuxserver/nginx:latest")); d != idx.Digest {
		t.Fatalf("crane digest = %s, want %s", d, idx.Digest)
	}
	if d := strings.TrimSpace(harness.RunTool(t, nil, crane, "digest", "--insecure", host+"/lscr.io/linuxserver/nginx:1.27")); d != img.Digest {
		t.Fatalf("crane digest 1.27 = %s, want %s", d, img.Digest)
	}
	harness.ExpectEachTagOnce(t, strings.Fields(harness.RunTool(t, nil, crane, "ls", "--insecure", host+"/lscr.io/linuxserver/tags")), tags)
	out := filepath.Join(t.TempDir(), "img.tar")
	harness.RunTool(t, nil, crane, "pull", "--insecure", host+"/lscr.io/linuxserver/nginx:1.27", out)
	if st, err := os.Stat(out); err != nil || st.Size() == 0 {
		t.Fatalf("crane pull wrote nothing: %v", err)
	}
	harness.RunTool(t, nil, crane, "validate", "--insecure", "--remote", host+"/lscr.io/linuxserver/nginx:1.27")
}

func TestCLISkopeo(t *testing.T) {
	skopeo := harness.Tool(t, "skopeo", "apt-get install -y skopeo")
	t.Parallel()
	host, idx, img, tags := startForClients(t)
	var inspect struct {
		Digest       string
		Architecture string
		Os           string
	}
	// inspect reads the manifest and the config blob.
	raw := harness.RunTool(t, nil, skopeo, "inspect", "--tls-verify=false", "docker://"+host+"/lscr.io/linuxserver/nginx:1.27")
	if err := json.Unmarshal([]byte(raw), &inspect); err != nil {
		t.Fatalf("skopeo inspect: %v\n%s", err, raw)
	}
	if inspect.Digest != img.Digest || inspect.Architecture != "amd64" || inspect.Os != "linux" {
		t.Fatalf("skopeo inspect = %+v, want digest %s linux/amd64", inspect, img.Digest)
	}
	raw = harness.RunTool(t, nil, skopeo, "inspect", "--tls-verify=false", "--override-arch", "arm64", "docker://"+host+"/lscr.io/linuxserver/nginx:latest")
	if err := json.Unmarshal([]byte(raw), &inspect); err != nil || inspect.Architecture != "arm64" {
		t.Fatalf("skopeo inspect arm64 of the index: %+v %v", inspect, err)
	}
	if m := harness.RunTool(t, nil, skopeo, "inspect", "--tls-verify=false", "--raw", "docker://"+host+"/lscr.io/linuxserver/nginx:latest"); m != string(idx.Body) {
		t.Fatal("skopeo inspect --raw: index bytes differ from upstream's")
	}
	var list struct{ Tags []string }
	if err := json.Unmarshal([]byte(harness.RunTool(t, nil, skopeo, "list-tags", "--tls-verify=false", "docker://"+host+"/lscr.io/linuxserver/tags")), &list); err != nil {
		t.Fatal(err)
	}
	harness.ExpectEachTagOnce(t, list.Tags, tags)
	dir := filepath.Join(t.TempDir(), "oci")
	harness.RunTool(t, nil, skopeo, "copy", "--src-tls-verify=false", "docker://"+host+"/lscr.io/linuxserver/nginx:1.27", "oci:"+dir+":copied")
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err != nil {
		t.Fatalf("skopeo copy left no OCI layout: %v", err)
	}
}

func TestCLIRegctl(t *testing.T) {
	regctl := harness.Tool(t, "regctl", "go install github.com/regclient/regclient/cmd/regctl@v0.11.7")
	t.Parallel()
	host, idx, _, tags := startForClients(t)
	env := []string{"HOME=" + t.TempDir()} // regctl keeps its registry settings under HOME
	harness.RunTool(t, env, regctl, "registry", "set", host, "--tls", "disabled")
	if d := strings.TrimSpace(harness.RunTool(t, env, regctl, "image", "digest", host+"/lscr.io/linuxserver/nginx:latest")); d != idx.Digest {
		t.Fatalf("regctl image digest = %s, want %s", d, idx.Digest)
	}
	harness.ExpectEachTagOnce(t, strings.Fields(harness.RunTool(t, env, regctl, "tag", "ls", host+"/lscr.io/linuxserver/tags")), tags)
}
