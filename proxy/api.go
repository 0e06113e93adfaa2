package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/valyala/fasthttp"

	"regcache/cache"
	"regcache/upstream"
)

// Limits of the batch endpoint.
const (
	maxBatchImages   = 1000
	batchConcurrency = 16
)

// DigestResult is one answer of the digest API.
type DigestResult struct {
	Image          string `json:"image"`
	Registry       string `json:"registry"`
	Repository     string `json:"repository"`
	Tag            string `json:"tag,omitempty"`
	Digest         string `json:"digest"`
	MediaType      string `json:"mediaType"`
	Platform       string `json:"platform,omitempty"`
	PlatformDigest string `json:"platformDigest,omitempty"`
	Cache          string `json:"cache"`
	// FetchedAt and AgeSeconds: when the tag's answer was fetched or last confirmed
	// upstream, and how long ago (the Age header's value); TTLSeconds, how long it stays
	// fresh (its tag's TTL rule, or tag_ttl). None for a digest, which never goes stale.
	FetchedAt  string `json:"fetchedAt,omitempty"`
	AgeSeconds *int64 `json:"ageSeconds,omitempty"`
	TTLSeconds *int64 `json:"ttlSeconds,omitempty"`
}

// batchError is a batch entry for an image that could not be looked up.
type batchError struct {
	Image string    `json:"image"`
	Error errorItem `json:"error"`
}

// serveDigest answers GET /api/v1/digest?image=...&platform=...
func (p *Proxy) serveDigest(ctx *fasthttp.RequestCtx, now time.Time) {
	args := ctx.QueryArgs()
	image := string(args.Peek("image"))
	res, aerr := p.lookupDigest(detached, image, string(args.Peek("platform")), now)
	if aerr != nil {
		writeError(ctx, aerr)
		return
	}
	writeJSON(ctx, res)
}

// serveDigests answers POST /api/v1/digests {"images":[...],"platform":"..."}.
// Each image is a lookup of its own, with its own clock read: a batch of 1000 may take
// longer than a tag's TTL.
func (p *Proxy) serveDigests(ctx *fasthttp.RequestCtx) {
	var req struct {
		Images   []string `json:"images"`
		Platform string   `json:"platform"`
	}
	if err := json.Unmarshal(ctx.PostBody(), &req); err != nil {
		writeError(ctx, errBodyInvalid.with(`body must be JSON: {"images":["nginx:latest",...],"platform":"linux/amd64"}`))
		return
	}
	if len(req.Images) == 0 {
		writeError(ctx, errBodyInvalid.with("images must list at least one image"))
		return
	}
	if len(req.Images) > maxBatchImages {
		writeError(ctx, errBodyInvalid.with("at most 1000 images per request"))
		return
	}
	if req.Platform != "" {
		if _, aerr := parsePlatform(req.Platform); aerr != nil {
			writeError(ctx, aerr)
			return
		}
	}
	out := make([]any, len(req.Images))
	sem := make(chan struct{}, batchConcurrency)
	var wg sync.WaitGroup
	for i, image := range req.Images {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			res, aerr := p.lookupDigest(detached, image, req.Platform, time.Now())
			if aerr != nil {
				out[i] = batchError{Image: image, Error: aerr.item()}
				return
			}
			out[i] = res
		}()
	}
	wg.Wait()
	writeJSON(ctx, struct {
		Results []any `json:"results"`
	}{out})
}

// maxVariant bounds a numbered platform variant (v7, v8.2, v3). containerd's matcher lists
// every lower variant of amd64 and arm as compatible, one entry each: linux/arm/v66666611
// would cost 66 million of them, gigabytes and a minute of CPU, per request. Real variants
// are single digits (arm v5-v8, arm64 v8-v9.x, amd64 v1-v4).
const maxVariant = 9

// parsePlatform reads a client's platform (linux/arm64, linux/arm/v7), normalized.
func parsePlatform(s string) (ocispec.Platform, *apiError) {
	bad := func(why string) *apiError {
		return errPlatformInvalid.with("invalid platform " + quote([]byte(s)) + why)
	}
	pl, err := platforms.Parse(s)
	if err != nil {
		return ocispec.Platform{}, bad("")
	}
	pl = platforms.Normalize(pl)
	// The matcher reads the variant as a number with or without its "v".
	major, _, _ := strings.Cut(strings.TrimPrefix(pl.Variant, "v"), ".")
	if n, err := strconv.Atoi(major); err == nil && (n < 0 || n > maxVariant) {
		return ocispec.Platform{}, bad(": no architecture has variant " + pl.Variant)
	}
	return pl, nil
}

// lookupDigest resolves one image reference, Docker-style (nginx is
// docker.io/library/nginx:latest), through the cache.
func (p *Proxy) lookupDigest(ctx context.Context, image, platform string, now time.Time) (*DigestResult, *apiError) {
	if image == "" {
		return nil, errNameInvalid.with("image is required, e.g. image=lscr.io/linuxserver/nginx:latest")
	}
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return nil, errNameInvalid.with("invalid image reference " + quote([]byte(image)) + ": " + err.Error())
	}
	var plat *ocispec.Platform
	if platform != "" {
		pl, aerr := parsePlatform(platform)
		if aerr != nil {
			return nil, aerr
		}
		plat = &pl
	}
	up, repo, aerr := p.resolve(named)
	if aerr != nil {
		return nil, aerr
	}
	res := &DigestResult{Registry: reference.Domain(named), Repository: repo}
	ref := "latest"
	if t, ok := named.(reference.Tagged); ok {
		ref, res.Tag = t.Tag(), t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		ref = d.Digest().String()
		res.Image = named.String()
	} else {
		if res.Tag == "" {
			res.Tag = "latest"
		}
		res.Image = reference.TagNameOnly(named).String()
	}
	a, err := p.cache.Load(ctx, cache.Request{Origin: up.Origin, Repo: res.Repository, Ref: ref, WantBody: plat != nil, Now: now})
	if err != nil {
		up.count(cache.None)
		return nil, fromUpstream(err, errManifestUnknown)
	}
	res.Digest, res.MediaType, res.Cache = string(a.Digest), a.MediaType, a.Status.String()
	if !a.FetchedAt.IsZero() {
		res.FetchedAt = a.FetchedAt.UTC().Format(time.RFC3339)
		age, ttl := ageSeconds(now, a.FetchedAt), int64((up.Origin.TTLFor(res.Tag)+time.Second-1)/time.Second) // a sub-second TTL is 1, not "none"
		res.AgeSeconds, res.TTLSeconds = &age, &ttl
	}
	if plat != nil {
		d, matched, aerr := p.pickPlatform(ctx, up, res.Repository, a, *plat)
		if aerr != nil {
			up.count(cache.None) // an error answer: not a hit
			return nil, aerr
		}
		res.Platform, res.PlatformDigest = platforms.Format(matched), string(d)
	}
	up.count(a.Status)
	return res, nil
}

// Resolve names the upstream and repository of an image name, Docker-style (nginx is
// docker.io/library/nginx): for what is configured by name rather than asked by path
// (watches).
func (p *Proxy) Resolve(named reference.Named) (*Upstream, string, error) {
	up, repo, aerr := p.resolve(named)
	if aerr != nil {
		return nil, "", errors.New(aerr.message)
	}
	return up, repo, nil
}

func (p *Proxy) resolve(named reference.Named) (*Upstream, string, *apiError) {
	domain := reference.Domain(named)
	up := p.lookup([]byte(domain))
	if up == nil {
		return nil, "", errNameUnknown.with("registry " + quote([]byte(domain)) + " is not configured in regcache")
	}
	repo := reference.Path(named)
	if up.DockerHub && !strings.Contains(repo, "/") {
		// reference normalizes docker.io itself, but not Docker Hub's other names
		// (registry-1.docker.io, an alias like hub).
		repo = "library/" + repo
	}
	return up, repo, nil
}

// pickPlatform finds the manifest for plat in an index, or checks a single manifest's
// config for it, and returns the platform as the image states it. arm64 matches arm64/v8,
// as the platforms package defines.
func (p *Proxy) pickPlatform(ctx context.Context, up *Upstream, repo string, a cache.Answer, plat ocispec.Platform) (digest.Digest, ocispec.Platform, *apiError) {
	notFound := errManifestUnknown.with("no manifest for platform " + platforms.Format(plat) + " in " + string(a.Digest))
	matcher := platforms.Only(plat)
	switch a.MediaType {
	case upstream.MediaTypeOCIIndex, upstream.MediaTypeDockerList:
		var idx ocispec.Index
		if err := json.Unmarshal(a.Body, &idx); err != nil {
			return "", plat, errManifestInvalid.with("index is not valid JSON")
		}
		var best *ocispec.Descriptor
		for i := range idx.Manifests {
			m := &idx.Manifests[i]
			if m.Platform == nil || !matcher.Match(platforms.Normalize(*m.Platform)) {
				continue
			}
			if best == nil || matcher.Less(platforms.Normalize(*m.Platform), platforms.Normalize(*best.Platform)) {
				best = m
			}
		}
		if best == nil {
			return "", plat, notFound
		}
		return best.Digest, *best.Platform, nil
	default:
		var m ocispec.Manifest
		if err := json.Unmarshal(a.Body, &m); err != nil || m.Config.Digest == "" {
			return "", plat, errManifestInvalid.with("manifest has no config to read its platform from")
		}
		cfg, _, err := p.cache.Blob(ctx, up.Origin, repo, m.Config.Digest, cache.BlobRequest{Body: true, NoStream: true})
		if err != nil {
			return "", plat, fromUpstream(err, errBlobUnknown)
		}
		if cfg.Data == nil {
			return "", plat, errManifestInvalid.with("image config too large to read its platform")
		}
		var img ocispec.Image
		if err := json.Unmarshal(cfg.Data, &img); err != nil {
			return "", plat, errManifestInvalid.with("image config is not valid JSON")
		}
		if !matcher.Match(platforms.Normalize(img.Platform)) {
			return "", plat, notFound
		}
		return a.Digest, img.Platform, nil
	}
}

func writeJSON(ctx *fasthttp.RequestCtx, v any) {
	body, _ := json.Marshal(v)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}
