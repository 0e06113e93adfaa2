package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"regcache/internal/flight"
)

// Challenge is a parsed WWW-Authenticate header. Realms are never assumed: lscr.io, for
// one, answers with ghcr.io's realm.
type Challenge struct {
	Scheme  string // "bearer" or "basic", lower-cased
	Realm   string
	Service string
	Scope   string
}

// ParseChallenge reads the first Bearer or Basic challenge from WWW-Authenticate values.
// Bearer wins over Basic when an upstream offers both.
func ParseChallenge(values []string) (Challenge, bool) {
	var basic *Challenge
	for _, v := range values {
		scheme, rest, _ := strings.Cut(strings.TrimSpace(v), " ")
		c := Challenge{Scheme: strings.ToLower(scheme)}
		for k, val := range parseParams(rest) {
			switch k {
			case "realm":
				c.Realm = val
			case "service":
				c.Service = val
			case "scope":
				c.Scope = val
			}
		}
		switch c.Scheme {
		case "bearer":
			if c.Realm != "" {
				return c, true
			}
		case "basic":
			if basic == nil {
				basic = &c
			}
		}
	}
	if basic != nil {
		return *basic, true
	}
	return Challenge{}, false
}

// parseParams reads auth-params: key=value or key="quoted \"value\"", comma separated.
func parseParams(s string) map[string]string {
	out := map[string]string{}
	for len(s) > 0 {
		s = strings.TrimLeft(s, " \t,")
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			break
		}
		key := strings.ToLower(strings.TrimSpace(s[:eq]))
		s = strings.TrimLeft(s[eq+1:], " \t")
		var val strings.Builder
		if strings.HasPrefix(s, `"`) {
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				val.WriteByte(s[i])
			}
			s = s[min(i+1, len(s)):]
		} else {
			end := strings.IndexAny(s, ", \t")
			if end < 0 {
				end = len(s)
			}
			val.WriteString(s[:end])
			s = s[end:]
		}
		out[key] = val.String()
	}
	return out
}

// token is a bearer token with the time it stops being usable.
type token struct {
	value   string
	expires time.Time
	seq     uint64 // when it was stored (authState.seq), to find the oldest
}

// maxTokenScopes bounds the tokens kept per upstream. Tokens are per repository scope, so
// a client asking for 100,000 distinct (even unknown) repositories would otherwise leave
// 100,000 tokens behind for a whole token lifetime. At the cap, expired tokens go first,
// then the oldest stored; a dropped scope costs one token request when asked again.
const maxTokenScopes = 4096

// authState remembers what an upstream asked for and the tokens it gave, so that after the
// first 401 every request goes out already authorized instead of paying a second round trip.
type authState struct {
	mu        sync.Mutex
	challenge *Challenge
	tokens    map[string]token // by scope; at most maxTokenScopes
	// order lists stores oldest first. An item whose seq no longer matches its scope's
	// token (renewed or dropped since) is stale and skipped; compaction keeps it bounded.
	order []scopeSeq
	seq   uint64
	// soonest is at or before every kept token's expiry: until then no sweep can free
	// anything, so a full map of live tokens costs no scan per store.
	soonest time.Time
	// pingMu serializes the /v2/ ping that learns the challenge before the first request.
	pingMu sync.Mutex
	// fetching coalesces the token requests under way, by scope: a burst of cold requests
	// for one repository asks the token endpoint once, not once per request.
	fetching flight.Group[string]
}

type scopeSeq struct {
	scope string
	seq   uint64
}

func (a *authState) current() *Challenge {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.challenge
}

func (a *authState) setChallenge(c Challenge) {
	a.mu.Lock()
	a.challenge = &c
	a.mu.Unlock()
}

func (a *authState) cachedToken(scope string, now time.Time) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.tokens[scope]
	if !ok || now.After(t.expires) {
		return "", false
	}
	return t.value, true
}

func (a *authState) storeToken(scope string, t token) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tokens == nil {
		a.tokens = map[string]token{}
	}
	if _, renew := a.tokens[scope]; !renew && len(a.tokens) >= maxTokenScopes {
		a.makeRoom(time.Now())
	}
	a.seq++
	t.seq = a.seq
	a.tokens[scope] = t
	a.order = append(a.order, scopeSeq{scope, t.seq})
	if a.soonest.IsZero() || t.expires.Before(a.soonest) {
		a.soonest = t.expires
	}
	if len(a.order) > 2*maxTokenScopes {
		a.compact()
	}
}

// makeRoom frees one slot at least: expired tokens first (all of them, when any may have
// expired), then the oldest stored.
func (a *authState) makeRoom(now time.Time) {
	if !now.Before(a.soonest) {
		a.soonest = time.Time{}
		for k, v := range a.tokens {
			if now.After(v.expires) {
				delete(a.tokens, k)
				continue
			}
			if a.soonest.IsZero() || v.expires.Before(a.soonest) {
				a.soonest = v.expires
			}
		}
	}
	for len(a.tokens) >= maxTokenScopes && len(a.order) > 0 {
		o := a.order[0]
		a.order = a.order[1:]
		if t, ok := a.tokens[o.scope]; ok && t.seq == o.seq {
			delete(a.tokens, o.scope)
		}
	}
}

// compact drops stale items from order (renewals and drops leave them behind).
func (a *authState) compact() {
	live := make([]scopeSeq, 0, len(a.tokens))
	for _, o := range a.order {
		if t, ok := a.tokens[o.scope]; ok && t.seq == o.seq {
			live = append(live, o)
		}
	}
	a.order = live
}

func (a *authState) dropToken(scope string) {
	a.mu.Lock()
	delete(a.tokens, scope)
	a.mu.Unlock()
}

// authorize sets Authorization on req for the scope, fetching a token first when the
// upstream is known to want one. It is a no-op before the first challenge is seen.
func (r *Registry) authorize(ctx context.Context, req *http.Request, scope string) error {
	c := r.auth.current()
	if c == nil {
		c = r.ping(ctx)
	}
	if c == nil {
		return nil
	}
	switch c.Scheme {
	case "basic":
		if r.username != "" {
			req.SetBasicAuth(r.username, r.password)
		}
	case "bearer":
		tok, ok := r.auth.cachedToken(scope, time.Now())
		if !ok {
			var err error
			if tok, err = r.sharedToken(ctx, *c, scope); err != nil {
				return err
			}
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	return nil
}

// sharedToken is fetchToken, coalesced per scope. The request runs on its own goroutine,
// bounded by the upstream timeout and by Close but not by the first caller's context, so a
// client that gives up neither waits for it nor fails the others waiting on it.
func (r *Registry) sharedToken(ctx context.Context, c Challenge, scope string) (string, error) {
	v, err, _ := r.auth.fetching.Do(ctx, scope, func() (string, error) {
		life := r.life
		if life == nil {
			life = context.Background()
		}
		fctx, cancel := context.WithTimeout(life, r.timeout)
		defer cancel()
		return r.fetchToken(fctx, c, scope)
	})
	return v, err
}

// ping asks /v2/ once which challenge the upstream uses, as Docker clients do, so that the
// first manifest request already carries a token instead of costing a 401 round trip.
// A failed ping is not remembered: the request goes out bare and a 401 still teaches us.
func (r *Registry) ping(ctx context.Context) *Challenge {
	r.auth.pingMu.Lock()
	defer r.auth.pingMu.Unlock()
	if c := r.auth.current(); c != nil {
		return c
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base.String()+"/v2/", nil)
	if err != nil {
		return nil
	}
	req.Header.Set("User-Agent", r.userAgent)
	resp, err := r.send(req)
	if err != nil {
		return nil
	}
	defer drainClose(resp)
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		if c, ok := ParseChallenge(resp.Header.Values("WWW-Authenticate")); ok {
			r.auth.setChallenge(c)
			return &c
		}
	case resp.StatusCode < 300:
		r.auth.setChallenge(Challenge{Scheme: "none"})
		return r.auth.current()
	}
	return nil
}

// tokenResponse is the token endpoint's JSON. Docker Hub sends both fields; some
// registries send only access_token (the OAuth2 name).
type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
}

// fetchToken exchanges (optional) credentials for a bearer token at the challenge's realm.
func (r *Registry) fetchToken(ctx context.Context, c Challenge, scope string) (string, error) {
	realm, err := url.Parse(c.Realm)
	if err != nil || (realm.Scheme != "https" && realm.Scheme != "http") || realm.Host == "" {
		return "", r.invalid("token realm %q is not an http(s) URL", c.Realm)
	}
	// The realm is where upstream sends our credentials, so it obeys the redirect rules:
	// TLS stays TLS, and no realm leads into a network the upstream does not live in.
	if why := r.refuseTarget(ctx, realm); why != "" {
		return "", r.invalid("token realm refused: %s", why)
	}
	q := realm.Query()
	if c.Service != "" {
		q.Set("service", c.Service)
	}
	q.Set("scope", scope)
	realm.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
	if err != nil {
		return "", r.invalid("building token request: %v", err)
	}
	if r.username != "" {
		req.SetBasicAuth(r.username, r.password)
	}
	resp, err := r.send(req)
	if err != nil {
		return "", err
	}
	defer drainClose(resp)
	if err := r.checkResponse(resp); err != nil {
		if e, ok := err.(*Error); ok {
			// Only the status: the endpoint's own text may echo what was sent to it (a
			// username, a password), and this message reaches clients, logs and the status page.
			e.Message = fmt.Sprintf("token endpoint answered HTTP %d", e.Status)
			switch e.Kind {
			case KindNotFound, KindInvalid:
				// A broken token endpoint is an upstream failure, not a missing image.
				e.Kind = KindUnavailable
			case KindDenied:
				if r.username == "" {
					// Anonymous access refused for this scope: an answer about the repository
					// (ghcr.io answers 401 here for a private or missing package), kept as a
					// denial like a manifest-level one.
					break
				}
				// Our own credentials refused (expired, revoked, or a one-off): an outage of
				// the whole upstream, served around with stale answers, never an answer about
				// the image. Only a denial of the manifest itself, with a token, is one.
				e.Kind, e.Credentials = KindUnavailable, true
				e.Message = "credentials rejected by the token endpoint: " + e.Message
				r.creds.rejected(e.Status)
			}
		}
		return "", err
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", r.unavailable(err, "reading token")
	}
	var tr tokenResponse
	if err := json.Unmarshal(data, &tr); err != nil {
		return "", &Error{Kind: KindUnavailable, Upstream: r.name, Message: "token endpoint answered something that is not token JSON"}
	}
	value := tr.Token
	if value == "" {
		value = tr.AccessToken
	}
	if value == "" {
		return "", &Error{Kind: KindUnavailable, Upstream: r.name, Message: "token endpoint answered no token"}
	}
	// The spec's default lifetime is 60 s; renew a little early so a token never dies in flight.
	life := time.Duration(tr.ExpiresIn) * time.Second
	if life <= 0 {
		life = 60 * time.Second
	}
	life -= min(life/10, 30*time.Second)
	r.auth.storeToken(scope, token{value: value, expires: time.Now().Add(life)})
	r.creds.accepted()
	return value, nil
}

func (r *Registry) invalid(format string, a ...any) error {
	return &Error{Kind: KindInvalid, Upstream: r.name, Message: fmt.Sprintf(format, a...)}
}
