package main

// `regcache digest`: the digest API from a shell. With a server (--server or REGCACHE_URL)
// it asks that regcache; without, it builds the same proxy in process from a config and
// asks it over an in-memory connection, so both modes send the same request, read the same
// answer and print the same lines: the Accept normalization, upstream auth and platform
// matching are the server's own code either way.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/valyala/fasthttp/fasthttputil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"regcache/configs"
	"regcache/internal/version"
)

// batchSize is the most images the batch endpoint takes in one request (proxy's limit):
// longer lists go in several requests, one after another.
const batchSize = 1000

// answerTimeout bounds the wait for a server's answer to one batch.
const answerTimeout = 5 * time.Minute

// digestArgs is what `regcache digest` was asked.
type digestArgs struct {
	server, config, platform string
	// serverSet and configSet: the flag was given (an empty --server= still beats
	// REGCACHE_URL).
	serverSet, configSet bool
	json                 bool
	images               []string
}

// usageError is a mistake on the command line or in the config: exit 2.
type usageError struct{ error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

const digestUsage = `usage: regcache digest [--server URL] [--config FILE] [--platform os/arch[/variant]] [--json] IMAGE...

Prints "IMAGE DIGEST" per image ("IMAGE DIGEST PLATFORM-DIGEST" with --platform), or with
--json the batch API's answer. With --server (or REGCACHE_URL) it asks that regcache
(credentials: user:password@ in the URL, or REGCACHE_TOKEN); without, it asks the
registries directly, as regcache would, with the upstreams of --config (default: the
embedded config). Exit 0: all found; 1: some not found; 2: usage or config error.
`

// digestCommand runs `regcache digest` and returns its exit code.
func digestCommand(args []string, stdout, stderr io.Writer) int {
	a, err := parseDigestArgs(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, digestUsage)
		return exitOK
	}
	if err == nil {
		var results []json.RawMessage
		results, err = a.lookup(stderr)
		if err == nil {
			return a.print(results, stdout, stderr)
		}
		if len(results) > 0 {
			// A later batch failed: what the earlier ones found is still printed.
			a.print(results, stdout, stderr)
			err = fmt.Errorf("%w (%d of %d images not looked up)", err, len(a.images)-len(results), len(a.images))
		}
	}
	fmt.Fprintln(stderr, "regcache digest:", err)
	if errors.As(err, new(usageError)) {
		return exitUsage
	}
	return exitNotFound
}

// parseDigestArgs reads flags wherever they stand among the images (`regcache digest
// alpine --json`), as -flag or --flag, with the value after = or as the next argument;
// "--" ends the flags.
func parseDigestArgs(args []string) (digestArgs, error) {
	var a digestArgs
	fs := flag.NewFlagSet("regcache digest", flag.ContinueOnError)
	fs.StringVar(&a.server, "server", "", "")
	fs.StringVar(&a.config, "config", "", "")
	fs.StringVar(&a.platform, "platform", "", "")
	fs.BoolVar(&a.json, "json", false, "")
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			a.images = append(a.images, args[i+1:]...)
			break
		}
		if len(arg) < 2 || arg[0] != '-' {
			a.images = append(a.images, arg)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(arg[1:], "-"), "=")
		if name == "h" || name == "help" {
			return a, flag.ErrHelp
		}
		f := fs.Lookup(name)
		if f == nil {
			flagName, _, _ := strings.Cut(arg, "=")
			return a, usagef("unknown flag %s (flags: --server, --config, --platform, --json)", flagName)
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			if !hasValue {
				value = "true"
			}
		} else if !hasValue {
			if i+1 == len(args) {
				return a, usagef("--%s needs a value", name)
			}
			i++
			value = args[i]
		}
		if err := fs.Set(name, value); err != nil {
			return a, usagef("--%s: invalid value %q", name, value)
		}
		switch name {
		case "server":
			a.serverSet = true
		case "config":
			a.configSet = true
		}
	}
	if len(a.images) == 0 {
		return a, usagef("no image given\n%s", digestUsage)
	}
	if a.serverSet && a.configSet {
		return a, usagef("--config is for asking the registries directly; with --server, that regcache's own config applies")
	}
	if !a.serverSet && !a.configSet {
		a.server = os.Getenv("REGCACHE_URL")
	}
	if a.platform != "" {
		parts := strings.Split(a.platform, "/")
		if (len(parts) != 2 && len(parts) != 3) || strings.Contains("/"+a.platform+"/", "//") {
			return a, usagef("--platform %q is not os/arch[/variant] (linux/amd64, linux/arm/v7)", a.platform)
		}
	}
	for _, image := range a.images {
		if _, err := reference.ParseNormalizedNamed(image); err != nil {
			return a, usagef("invalid image reference %q: %v", image, err)
		}
	}
	return a, nil
}

// lookup asks the batch endpoint for every image, in order, and returns its results: on an
// error, those of the batches before it.
func (a *digestArgs) lookup(stderr io.Writer) ([]json.RawMessage, error) {
	var c *apiClient
	var err error
	if a.server != "" {
		c, err = serverClient(a.server)
	} else {
		var stop func()
		c, stop, err = standaloneClient(a.config, stderr)
		if stop != nil {
			defer stop()
		}
	}
	if err != nil {
		return nil, err
	}
	var results []json.RawMessage
	for start := 0; start < len(a.images); start += batchSize {
		got, err := c.batch(a.images[start:min(start+batchSize, len(a.images))], a.platform)
		results = append(results, got...)
		if err != nil {
			return results, err
		}
	}
	return results, nil
}

// print writes the results as lines (or JSON) and returns the exit code: 1 when any image
// has an error, each of which goes to stderr as "IMAGE: message".
func (a *digestArgs) print(results []json.RawMessage, stdout, stderr io.Writer) int {
	code := exitOK
	var out bytes.Buffer
	for i, raw := range results {
		var r struct {
			Digest, PlatformDigest string
			Error                  *struct{ Code, Message string }
		}
		if err := json.Unmarshal(raw, &r); err != nil || (r.Error == nil && r.Digest == "") {
			r.Error = &struct{ Code, Message string }{Message: "the answer holds no digest for it"}
		}
		if r.Error != nil {
			code = exitNotFound
			fmt.Fprintf(stderr, "%s: %s\n", a.images[i], r.Error.Message)
			continue
		}
		if a.json {
			continue
		}
		out.WriteString(a.images[i] + " " + r.Digest)
		if a.platform != "" {
			out.WriteString(" " + r.PlatformDigest)
		}
		out.WriteByte('\n')
	}
	if a.json {
		body, _ := json.MarshalIndent(struct {
			Results []json.RawMessage `json:"results"`
		}{results}, "", "  ")
		out.Write(append(body, '\n'))
	}
	_, _ = stdout.Write(out.Bytes())
	return code
}

// apiClient posts to a regcache's batch digest endpoint.
type apiClient struct {
	http *http.Client
	// base is the server's URL without credentials; where names it in messages.
	base, where string
	// auth is the Authorization header sent, if any.
	auth string
}

// serverClient is a client for the regcache at raw (http or https, with an optional path
// prefix). Credentials in the URL are sent as Basic auth, else REGCACHE_TOKEN as a Bearer
// token; neither is ever printed.
func serverClient(raw string) (*apiClient, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, usagef("server URL %q is not http(s)://host[:port][/path]", redactedURL(raw))
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	// A batch of a thousand images that all miss takes a while; a server that accepts and
	// never answers must not hang a script for ever.
	transport.ResponseHeaderTimeout = answerTimeout
	c := &apiClient{http: &http.Client{Transport: transport,
		// A redirect is not followed: it would carry the credentials and the image list to
		// wherever it points (Go keeps Authorization when only the port differs).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	if u.User != nil {
		pass, _ := u.User.Password()
		c.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass))
		u.User = nil
	} else if tok := os.Getenv("REGCACHE_TOKEN"); tok != "" {
		c.auth = "Bearer " + tok
	}
	c.base = strings.TrimSuffix(u.String(), "/")
	c.where = "regcache at " + c.base
	return c, nil
}

// redactedURL is raw with any password hidden, for a message about a URL that was refused
// (one without a scheme parses with its user:password@ as part of the path).
func redactedURL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		return u.Redacted()
	}
	if at := strings.LastIndex(raw, "@"); at >= 0 {
		return "…" + raw[at:]
	}
	return raw
}

// standaloneClient builds regcache from the config at path (the embedded one when empty)
// as standalone leaves it, serves it on an in-memory listener and returns a client for it,
// and stop, which shuts it down. Its log goes to stderr, warnings and errors only, so that
// stdout holds only the results.
func standaloneClient(path string, stderr io.Writer) (*apiClient, func(), error) {
	cfg, err := configs.LoadForLookup(path)
	if err != nil {
		return nil, nil, usageError{err}
	}
	enc := zap.NewDevelopmentEncoderConfig()
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(zapcore.AddSync(stderr)), zapcore.WarnLevel))
	srv, err := build(cfg, log, buildOptions{})
	if err != nil {
		return nil, nil, usageError{err}
	}
	ln := fasthttputil.NewInmemoryListener()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	transport := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return ln.Dial() }}
	stop := func() {
		transport.CloseIdleConnections() // or the server's shutdown waits for them to time out
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.ShutdownWithContext(ctx)
		_ = ln.Close()
		<-served
	}
	return &apiClient{http: &http.Client{Transport: transport}, base: "http://regcache", where: "regcache (standalone)"}, stop, nil
}

// errTooLarge is a batch of more than one image refused for its size (413).
var errTooLarge = errors.New("batch too large")

// batch asks for images, halving a batch the server refuses as too large: its
// max_request_body may hold far fewer than a thousand names. On an error it returns the
// results of the halves before it.
func (c *apiClient) batch(images []string, platform string) ([]json.RawMessage, error) {
	got, err := c.digests(images, platform)
	if !errors.Is(err, errTooLarge) {
		return got, err
	}
	half := len(images) / 2
	first, err := c.batch(images[:half], platform)
	if err != nil {
		return first, err
	}
	rest, err := c.batch(images[half:], platform)
	return append(first, rest...), err
}

// digests posts one batch and returns its results, one per image.
func (c *apiClient) digests(images []string, platform string) ([]json.RawMessage, error) {
	body, _ := json.Marshal(struct {
		Images   []string `json:"images"`
		Platform string   `json:"platform,omitempty"`
	}{images, platform})
	req, err := http.NewRequest(http.MethodPost, c.base+"/api/v1/digests", bytes.NewReader(body))
	if err != nil {
		return nil, usageError{err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "regcache-digest/"+version.String())
	if c.auth != "" {
		req.Header.Set("Authorization", c.auth)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err // its Op and URL are the request's, not news to the user
		}
		return nil, fmt.Errorf("asking %s: %w", c.where, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: reading the answer: %w", c.where, err)
	}
	if resp.StatusCode == http.StatusRequestEntityTooLarge && len(images) > 1 {
		return nil, errTooLarge
	}
	if resp.StatusCode != http.StatusOK {
		return nil, c.refused(resp.StatusCode, data)
	}
	var ans struct {
		Results []json.RawMessage `json:"results"`
	}
	if err := json.Unmarshal(data, &ans); err != nil || len(ans.Results) != len(images) {
		return nil, fmt.Errorf("%s answered %d results for %d images (is it a regcache?)", c.where, len(ans.Results), len(images))
	}
	return ans.Results, nil
}

// refused is the error for a batch the server did not answer: its own registry error
// message where it sent one. A 4xx other than a timeout or a rate limit (a platform it
// refuses, missing credentials, a URL that is no regcache) is the user's to fix: exit 2.
func (c *apiClient) refused(status int, body []byte) error {
	var e struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	why := http.StatusText(status)
	if json.Unmarshal(body, &e) == nil && len(e.Errors) > 0 {
		why = e.Errors[0].Code + ": " + e.Errors[0].Message
	}
	err := fmt.Errorf("%s answered %d %s", c.where, status, why)
	switch {
	case status == http.StatusUnauthorized:
		hint := "give credentials: user:password@ in the server URL, or REGCACHE_TOKEN"
		if c.auth != "" {
			hint = "the credentials given were refused"
		}
		return usagef("%w (%s)", err, hint)
	case status >= 300 && status < 400 || status == http.StatusNotFound || status == http.StatusMethodNotAllowed:
		return usagef("%w (is it a regcache?)", err)
	case status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests:
		return usageError{err}
	}
	return err
}
