package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// lookTool finds a client CLI on PATH or in GOPATH/bin, or skips naming how to install it.
func lookTool(t *testing.T, name, install string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if gopath, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skipf("%s not installed (%s; bash .ci/test installs it)", name, install)
	return ""
}

func runTool(t *testing.T, env []string, tool string, args ...string) string {
	t.Helper()
	cmd := exec.Command(tool, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(tool), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// cliSetup is one upstream (Bearer auth, like ghcr) with an index, an image and a 300-tag
// repository, behind a regcache; the CLIs reach it in the path-prefix form.
func cliSetup(t *testing.T) (host string, idx, img registrytest.Pushed, tags []string) {
	reg := registrytest.New(t, registrytest.Bearer)
	idx = reg.PushIndex(t, "linuxserver/nginx", "latest", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
	img = reg.PushImage(t, "linuxserver/nginx", "1.27", types.DockerManifestSchema2)
	tags = tagNames(300)
	reg.PushTags(t, "linuxserver/tags", tags)
	reg.SetPaging(registrytest.PagingLink, 100)
	rc := startRegcache(t, harness.Config("", harness.Upstream("lscr.io", reg.URL)))
	return strings.TrimPrefix(rc.URL, "http://"), idx, img, tags
}

func TestCLICrane(t *testing.T) {
	crane := lookTool(t, "crane", "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1")
	t.Parallel()
	host, idx, img, tags := cliSetup(t)
	if d := strings.TrimSpace(runTool(t, nil, crane, "digest", "--insecure", host+"/lscr.io/linuxserver/nginx:latest")); d != idx.Digest {
		t.Fatalf("crane digest = %s, want %s", d, idx.Digest)
	}
	if d := strings.TrimSpace(runTool(t, nil, crane, "digest", "--insecure", host+"/lscr.io/linuxserver/nginx:1.27")); d != img.Digest {
		t.Fatalf("crane digest 1.27 = %s, want %s", d, img.Digest)
	}
	assertExactlyOnce(t, strings.Fields(runTool(t, nil, crane, "ls", "--insecure", host+"/lscr.io/linuxserver/tags")), tags)
	out := filepath.Join(t.TempDir(), "img.tar")
	runTool(t, nil, crane, "pull", "--insecure", host+"/lscr.io/linuxserver/nginx:1.27", out)
	if st, err := os.Stat(out); err != nil || st.Size() == 0 {
		t.Fatalf("crane pull wrote nothing: %v", err)
	}
	runTool(t, nil, crane, "validate", "--insecure", "--remote", host+"/lscr.io/linuxserver/nginx:1.27")
}

func TestCLISkopeo(t *testing.T) {
	skopeo := lookTool(t, "skopeo", "apt-get install -y skopeo")
	t.Parallel()
	host, idx, img, tags := cliSetup(t)
	var inspect struct {
		Digest       string
		Architecture string
		Os           string
	}
	// inspect reads the manifest and the config blob.
	raw := runTool(t, nil, skopeo, "inspect", "--tls-verify=false", "docker://"+host+"/lscr.io/linuxserver/nginx:1.27")
	if err := json.Unmarshal([]byte(raw), &inspect); err != nil {
		t.Fatalf("skopeo inspect: %v\n%s", err, raw)
	}
	if inspect.Digest != img.Digest || inspect.Architecture != "amd64" || inspect.Os != "linux" {
		t.Fatalf("skopeo inspect = %+v, want digest %s linux/amd64", inspect, img.Digest)
	}
	raw = runTool(t, nil, skopeo, "inspect", "--tls-verify=false", "--override-arch", "arm64", "docker://"+host+"/lscr.io/linuxserver/nginx:latest")
	if err := json.Unmarshal([]byte(raw), &inspect); err != nil || inspect.Architecture != "arm64" {
		t.Fatalf("skopeo inspect arm64 of the index: %+v %v", inspect, err)
	}
	if m := runTool(t, nil, skopeo, "inspect", "--tls-verify=false", "--raw", "docker://"+host+"/lscr.io/linuxserver/nginx:latest"); m != string(idx.Body) {
		t.Fatal("skopeo inspect --raw: index bytes differ from upstream's")
	}
	var list struct{ Tags []string }
	if err := json.Unmarshal([]byte(runTool(t, nil, skopeo, "list-tags", "--tls-verify=false", "docker://"+host+"/lscr.io/linuxserver/tags")), &list); err != nil {
		t.Fatal(err)
	}
	assertExactlyOnce(t, list.Tags, tags)
	dir := filepath.Join(t.TempDir(), "oci")
	runTool(t, nil, skopeo, "copy", "--src-tls-verify=false", "docker://"+host+"/lscr.io/linuxserver/nginx:1.27", "oci:"+dir+":copied")
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err != nil {
		t.Fatalf("skopeo copy left no OCI layout: %v", err)
	}
}

func TestCLIRegctl(t *testing.T) {
	regctl := lookTool(t, "regctl", "go install github.com/regclient/regclient/cmd/regctl@v0.11.7")
	t.Parallel()
	host, idx, _, tags := cliSetup(t)
	env := []string{"HOME=" + t.TempDir()} // regctl keeps its registry settings under HOME
	runTool(t, env, regctl, "registry", "set", host, "--tls", "disabled")
	if d := strings.TrimSpace(runTool(t, env, regctl, "image", "digest", host+"/lscr.io/linuxserver/nginx:latest")); d != idx.Digest {
		t.Fatalf("regctl image digest = %s, want %s", d, idx.Digest)
	}
	assertExactlyOnce(t, strings.Fields(runTool(t, env, regctl, "tag", "ls", host+"/lscr.io/linuxserver/tags")), tags)
}
