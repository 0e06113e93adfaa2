package main

// regcache over HTTPS (tls:): real clients verify its certificate against a test CA with
// no "insecure" setting, the token realm they are sent to says https, and a certificate
// replaced on disk is served to the next new connection while one opened before goes on.

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/internal/testca"
	"regcache/upstream/registrytest"
)

// tlsToken is the static client token of the TLS tests (sent as a Basic password).
const tlsToken = "tls-e2e-token-0123456789"

// startTLS starts a registry holding team/app:v1 behind a regcache serving HTTPS with a
// pair from a test CA, client auth on (a static token), and returns the image's digest.
func startTLS(t *testing.T) (rc *harness.Instance, x *harness.TLS, digest string) {
	t.Helper()
	reg := registrytest.New(t, registrytest.Bearer)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	x = harness.NewTLS(t)
	cfg := harness.Config("", harness.Upstream("reg.test", reg.URL)) + harness.Block("auth", "tokens: ["+tlsToken+"]")
	return startRegcacheWith(t, cfg, harness.Options{TLS: x}), x, img.Digest
}

// dockerConfig is a DOCKER_CONFIG directory holding credentials for host, as docker login
// writes them.
func dockerConfig(t *testing.T, host string) string {
	t.Helper()
	dir := t.TempDir()
	auth := map[string]any{"auths": map[string]any{host: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte("ci:" + tlsToken))}}}
	b, _ := json.Marshal(auth)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestTLSListenerGoClient(t *testing.T) {
	t.Parallel()
	rc, x, _ := startTLS(t)
	if !strings.HasPrefix(rc.URL, "https://127.0.0.1:") {
		t.Fatalf("URL %s", rc.URL)
	}
	resp, err := rc.Client.Get(rc.URL + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 || resp.ProtoMajor != 1 || resp.ProtoMinor != 1 {
		t.Fatalf("TLS %+v, proto %s", resp.TLS, resp.Proto)
	}
	if got := resp.TLS.PeerCertificates[0].SerialNumber.String(); got != x.Serial {
		t.Fatalf("served serial %s, want %s", got, x.Serial)
	}
	// The realm regcache sends clients to says https: with TLS on, IsTLS holds on the
	// wrapped listener's connections.
	if got := resp.Header.Get("WWW-Authenticate"); resp.StatusCode != http.StatusUnauthorized || got != challengeFor(rc.URL) {
		t.Fatalf("/v2/ without credentials: %d %q, want 401 %q", resp.StatusCode, got, challengeFor(rc.URL))
	}
	if r := rc.Do(t, "GET", "/v2/reg.test/team/app/manifests/v1", "Authorization", basicHeader("ci", tlsToken)); r.Status != http.StatusOK {
		t.Fatalf("manifest over TLS: %d %s", r.Status, r.Body)
	}
	// A client speaking plain HTTP to the TLS port gets no answer it could take for one.
	if _, _, err := harness.Send(t, rc.Addr, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"); err == nil {
		t.Error("plain HTTP to the TLS listener got an HTTP answer")
	}
	if !strings.Contains(rc.Logs.String(), `"msg":"tls certificate loaded"`) || !strings.Contains(rc.Logs.String(), `"not_after"`) {
		t.Errorf("no start line naming the certificate:\n%s", rc.Logs)
	}
	if strings.Contains(rc.Logs.String(), "PRIVATE KEY") {
		t.Error("the log shows the key")
	}
}

func TestTLSListenerCrane(t *testing.T) {
	crane := harness.Tool(t, "crane", "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1")
	t.Parallel()
	rc, x, digest := startTLS(t)
	// Go reads SSL_CERT_FILE on Linux: the test CA, and no --insecure.
	env := []string{"SSL_CERT_FILE=" + x.CAFile, "DOCKER_CONFIG=" + dockerConfig(t, rc.Addr)}
	if d := strings.TrimSpace(harness.RunTool(t, env, crane, "digest", rc.Addr+"/reg.test/team/app:v1")); d != digest {
		t.Fatalf("crane digest = %s, want %s", d, digest)
	}
}

func TestTLSListenerSkopeo(t *testing.T) {
	skopeo := harness.Tool(t, "skopeo", "apt-get install -y skopeo")
	t.Parallel()
	rc, x, digest := startTLS(t)
	// --cert-dir holds ca.crt, as /etc/containers/certs.d/<host:port>/ would; TLS is
	// verified (skopeo's default for a host not listed insecure).
	raw := harness.RunTool(t, nil, skopeo, "inspect", "--cert-dir", x.CertDir, "--creds", "ci:"+tlsToken,
		"docker://"+rc.Addr+"/reg.test/team/app:v1")
	var inspect struct{ Digest string }
	if err := json.Unmarshal([]byte(raw), &inspect); err != nil || inspect.Digest != digest {
		t.Fatalf("skopeo inspect: %v %+v, want %s\n%s", err, inspect, digest, raw)
	}
	// Without the CA it refuses the certificate: the trust above is the CA's doing.
	out, err := exec.Command(skopeo, "inspect", "--creds", "ci:"+tlsToken, "docker://"+rc.Addr+"/reg.test/team/app:v1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "certificate") {
		t.Fatalf("skopeo without the CA: %v\n%s", err, out)
	}
	// A renewal from another CA: the next connection is verified against it alone.
	ca2 := testca.New(t, "second test CA")
	x.Renew(t, ca2)
	certDir := t.TempDir()
	testca.Write(t, filepath.Join(certDir, "ca.crt"), ca2.PEM)
	raw = harness.RunTool(t, nil, skopeo, "inspect", "--cert-dir", certDir, "--creds", "ci:"+tlsToken,
		"docker://"+rc.Addr+"/reg.test/team/app:v1")
	if err := json.Unmarshal([]byte(raw), &inspect); err != nil || inspect.Digest != digest {
		t.Fatalf("skopeo inspect after the renewal: %v %+v, want %s\n%s", err, inspect, digest, raw)
	}
}

func TestTLSListenerRegctl(t *testing.T) {
	regctl := harness.Tool(t, "regctl", "go install github.com/regclient/regclient/cmd/regctl@v0.11.7")
	t.Parallel()
	rc, x, digest := startTLS(t)
	env := []string{"HOME=" + t.TempDir()} // regctl keeps its registry settings under HOME
	// The check set makes would be refused (no credentials yet); login's check, with them,
	// goes over TLS verified against the CA.
	harness.RunTool(t, env, regctl, "registry", "set", rc.Addr, "--cacert", string(x.CA.PEM), "--skip-check")
	harness.RunTool(t, env, regctl, "registry", "login", rc.Addr, "-u", "ci", "-p", tlsToken)
	if d := strings.TrimSpace(harness.RunTool(t, env, regctl, "image", "digest", rc.Addr+"/reg.test/team/app:v1")); d != digest {
		t.Fatalf("regctl image digest = %s, want %s", d, digest)
	}
}

// TestTLSCertificateReplacedOnDisk: a renewal from another CA replaces the pair; the next
// new connection gets it (crane verifies it against the new CA alone, and no longer
// against the old one), and a keep-alive connection opened before goes on with the old.
func TestTLSCertificateReplacedOnDisk(t *testing.T) {
	t.Parallel()
	rc, x, digest := startTLS(t)
	ca2 := testca.New(t, "second test CA")
	both := x.CA.Pool()
	both.AddCert(ca2.Cert)
	keepAlive := &http.Client{Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: both}}}
	defer keepAlive.CloseIdleConnections()
	serialBefore := x.Serial
	if s, reused := askV2(t, keepAlive, rc.URL); s != serialBefore || reused {
		t.Fatalf("first connection: serial %s reused %v, want %s on a new one", s, reused, serialBefore)
	}

	serialAfter := x.Renew(t, ca2)
	fresh := &http.Client{Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: both}}}
	defer fresh.CloseIdleConnections()
	if s, _ := askV2(t, fresh, rc.URL); s != serialAfter {
		t.Fatalf("next new connection after the renewal: serial %s, want the new %s", s, serialAfter)
	}
	if s, reused := askV2(t, keepAlive, rc.URL); s != serialBefore || !reused {
		t.Fatalf("the keep-alive connection opened before: serial %s reused %v, want %s on the same connection", s, reused, serialBefore)
	}

	if !strings.Contains(rc.Logs.String(), `"msg":"tls certificate reloaded"`) {
		t.Errorf("no reload line:\n%s", rc.Logs)
	}
	// The CLI last: without crane, the checks above have run.
	crane := harness.Tool(t, "crane", "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1")
	env := []string{"SSL_CERT_FILE=" + ca2.File, "DOCKER_CONFIG=" + dockerConfig(t, rc.Addr)}
	if d := strings.TrimSpace(harness.RunTool(t, env, crane, "digest", rc.Addr+"/reg.test/team/app:v1")); d != digest {
		t.Fatalf("crane digest against the new CA = %s, want %s", d, digest)
	}
	cmd := exec.Command(crane, "digest", rc.Addr+"/reg.test/team/app:v1")
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+x.CAFile, "DOCKER_CONFIG="+dockerConfig(t, rc.Addr))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "certificate") {
		t.Fatalf("crane trusting only the old CA after the renewal: %v\n%s", err, out)
	}
}

// askV2 asks /v2/ (with credentials) with c and returns the serial of the certificate on
// the connection used and whether it was reused.
func askV2(t *testing.T, c *http.Client, base string) (serial string, reused bool) {
	t.Helper()
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
	})
	req, err := http.NewRequestWithContext(ctx, "GET", base+"/v2/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", basicHeader("ci", tlsToken))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body) // read whole, so the connection is kept
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/v2/: %d", resp.StatusCode)
	}
	return resp.TLS.PeerCertificates[0].SerialNumber.String(), reused
}

// TestTLSBinary runs the real binary: a pair missing at start is one line naming the key
// and a non-zero exit; with a good pair it serves HTTPS, and a bad pair written while it
// runs is logged while the previous certificate is still served.
func TestTLSBinary(t *testing.T) {
	bin := harness.BuildBinary(t)
	x := harness.NewTLS(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	cfg := harness.Config("", harness.Upstream("reg.test", reg.URL))

	missing := filepath.Join(t.TempDir(), "missing.key")
	bad := filepath.Join(t.TempDir(), "regcache.yaml")
	if err := os.WriteFile(bad, []byte(cfg+harness.Block("tls", "cert_file: "+x.CertFile, "key_file: "+missing)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-config", bad).CombinedOutput()
	if err == nil || !strings.HasPrefix(string(out), "regcache: ") || !strings.Contains(string(out), "tls.key_file: ") || !strings.Contains(string(out), missing+": no such file") ||
		strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Fatalf("missing key at start: %v\n%s", err, out)
	}

	p := harness.StartProcess(t, bin, cfg+x.Block())
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{RootCAs: x.CA.Pool()}}}
	serialOf := func() string {
		t.Helper()
		resp, err := client.Get("https://" + p.Addr + "/v2/")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized { // auth off: anonymous tokens, as registries
			t.Fatalf("/v2/ over TLS: %d", resp.StatusCode)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber.String()
	}
	if s := serialOf(); s != x.Serial {
		t.Fatalf("served %s, want %s", s, x.Serial)
	}
	testca.Write(t, x.CertFile, []byte("-----BEGIN CERTIFICATE-----\ntruncated"))
	if s := serialOf(); s != x.Serial {
		t.Fatalf("after a bad cert file was written: served %s, want the previous %s", s, x.Serial)
	}
	x.Renew(t, x.CA)
	if s := serialOf(); s != x.Serial {
		t.Fatalf("after a good pair: served %s, want %s", s, x.Serial)
	}
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-p.Exited; err != nil {
		t.Fatalf("exit: %v", err)
	}
	logs := p.Logs.String()
	for _, want := range []string{`"msg":"tls certificate loaded"`, `"msg":"tls certificate files changed but cannot be used; still serving the previous certificate"`,
		`"msg":"tls certificate reloaded"`} {
		if strings.Count(logs, want) != 1 {
			t.Errorf("log lines %s: %d, want 1\n%s", want, strings.Count(logs, want), logs)
		}
	}
}

// TestTLSListenerNode: Node (Renovate's runtime) verifies regcache's certificate with the
// test CA given as NODE_EXTRA_CA_CERTS, the recipe docs/clients.md gives for Renovate, and
// refuses it without.
func TestTLSListenerNode(t *testing.T) {
	node := harness.Tool(t, "node", "apt-get install -y nodejs")
	t.Parallel()
	rc, x, digest := startTLS(t)
	script := `require("https").get(process.argv[1], {headers: {Authorization: process.argv[2],
	  Accept: "application/vnd.oci.image.manifest.v1+json"}}, (r) => {
	  console.log(r.statusCode, r.headers["docker-content-digest"], r.socket.getPeerCertificate().serialNumber); r.resume();
	}).on("error", (e) => { console.log("error", e.code); process.exit(1); });`
	url := rc.URL + "/v2/reg.test/team/app/manifests/v1"
	serial, _ := new(big.Int).SetString(x.Serial, 10)
	serialHex := strings.ToUpper(serial.Text(16)) // as Node shows it
	out := strings.Fields(harness.RunTool(t, []string{"NODE_EXTRA_CA_CERTS=" + x.CAFile}, node, "-e", script, url, basicHeader("ci", tlsToken)))
	if len(out) != 3 || out[0] != "200" || out[1] != digest || strings.TrimLeft(out[2], "0") != serialHex {
		t.Fatalf("node with NODE_EXTRA_CA_CERTS: %q, want 200 %s %s", out, digest, serialHex)
	}
	cmd := exec.Command(node, "-e", script, url, basicHeader("ci", tlsToken))
	cmd.Env = os.Environ()
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "UNABLE_TO_VERIFY_LEAF_SIGNATURE") {
		t.Fatalf("node without the CA: %v %s", err, b)
	}
}

// TestTLSContainerdHostsToml: containerd's resolver, configured by the hosts.toml that
// docs/clients.md gives (an https host with ca = the CA file), resolves through regcache
// with the certificate verified, and with no ca it refuses it.
func TestTLSContainerdHostsToml(t *testing.T) {
	t.Parallel()
	rc, x, digest := startTLS(t)
	resolve := func(caLine string) error {
		root := t.TempDir()
		dir := filepath.Join(root, "reg.test")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		hostsToml := "server = \"https://127.0.0.1:9\"\n\n[host.\"" + rc.URL + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n" + caLine
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hostsToml), 0o644); err != nil {
			t.Fatal(err)
		}
		resolver := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(context.Background(), config.HostOptions{
			HostDir:     config.HostDirFromRoot(root),
			Credentials: func(string) (string, string, error) { return "ci", tlsToken, nil },
		})})
		_, desc, err := resolver.Resolve(context.Background(), "reg.test/team/app:v1")
		if err == nil && desc.Digest.String() != digest {
			t.Fatalf("resolved %s, want %s", desc.Digest, digest)
		}
		return err
	}
	if err := resolve("  ca = \"" + x.CAFile + "\"\n"); err != nil {
		t.Fatalf("containerd with ca = the test CA: %v\n%s", err, rc.Logs)
	}
	if err := resolve(""); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("containerd without the CA: %v", err)
	}
}

// TestTLSShutdownWithSilentClient: a connection that never begins its handshake does not
// hold the shutdown until read_timeout (30 s; Stop fails after 10).
func TestTLSShutdownWithSilentClient(t *testing.T) {
	t.Parallel()
	rc, _, _ := startTLS(t)
	c, err := net.Dial("tcp", rc.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc.Stop(t)
}
