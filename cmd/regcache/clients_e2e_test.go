package main

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

// TestGoContainerregistryClient drives regcache with go-containerregistry's remote package,
// crane's engine, in the path-prefix form: digests, a 300-tag list and a full pull whose
// every layer and config is verified by ggcr itself.
func TestGoContainerregistryClient(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	idx := reg.PushIndex(t, "linuxserver/nginx", "latest", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	img := reg.PushImage(t, "linuxserver/nginx", "1.27", types.DockerManifestSchema2)
	want := tagNames(300)
	reg.PushTags(t, "linuxserver/tags", want)
	reg.SetPaging(registrytest.PagingLink, 100)
	rc := startRegcache(t, harness.Config("", harness.Upstream("lscr.io", reg.URL)))
	host := strings.TrimPrefix(rc.URL, "http://")

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
	assertExactlyOnce(t, tags, want)
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
