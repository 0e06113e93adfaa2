package webhook

// What a delivery looks like in each format: the URL it goes to, its body and Content-Type.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"
	"time"

	"regcache/internal/feed"
)

// request is what delivering e posts: where, the body (nil for template) and its type.
func (h *Hook) request(e feed.Event) (target string, body []byte, contentType string, err error) {
	switch h.cfg.Format {
	case FormatTemplate:
		var b strings.Builder
		err := h.tmpl.Execute(&b, templateData{Image: url.QueryEscape(e.Image), Repository: url.QueryEscape(e.Repository),
			Tag: url.QueryEscape(e.Tag), Digest: url.QueryEscape(e.Digest)})
		return b.String(), nil, "", err
	case FormatCloudEvents:
		body, err = json.Marshal(cloudEvent{SpecVersion: "1.0", ID: e.ID, Source: h.opts.Source, Type: "io.regcache." + e.Type,
			Subject: e.Image, Time: e.Time, DataContentType: "application/json", Data: e})
		return h.cfg.URL, body, "application/cloudevents+json", err
	case FormatDockerHub:
		body, err = json.Marshal(dockerHubPush(e, h.opts.DockerHub(e.Registry)))
		return h.cfg.URL, body, "application/json", err
	}
	body, err = json.Marshal(e)
	return h.cfg.URL, body, "application/json", err
}

// cloudEvent is a CloudEvents 1.0 event in structured mode (application/cloudevents+json).
type cloudEvent struct {
	SpecVersion     string     `json:"specversion"`
	ID              string     `json:"id"`
	Source          string     `json:"source"`
	Type            string     `json:"type"` // io.regcache.tag.changed, ...
	Subject         string     `json:"subject,omitempty"`
	Time            string     `json:"time,omitempty"`
	DataContentType string     `json:"datacontenttype"`
	Data            feed.Event `json:"data"`
}

// dockerHubPayload is the body of Docker Hub's push webhook, as its documentation shows
// it; what regcache cannot know (stars, descriptions, privacy) is left at its zero value.
type dockerHubPayload struct {
	CallbackURL string `json:"callback_url"`
	PushData    struct {
		Images   []string `json:"images"`
		PushedAt int64    `json:"pushed_at"` // Unix seconds
		Pusher   string   `json:"pusher"`
		Tag      string   `json:"tag"`
	} `json:"push_data"`
	Repository struct {
		CommentCount    int    `json:"comment_count"`
		Description     string `json:"description"`
		Dockerfile      string `json:"dockerfile"`
		FullDescription string `json:"full_description"`
		IsOfficial      bool   `json:"is_official"`
		IsPrivate       bool   `json:"is_private"`
		IsTrusted       bool   `json:"is_trusted"`
		Name            string `json:"name"`
		Namespace       string `json:"namespace"`
		Owner           string `json:"owner"`
		RepoName        string `json:"repo_name"`
		RepoURL         string `json:"repo_url"`
		StarCount       int    `json:"star_count"`
		Status          string `json:"status"`
	} `json:"repository"`
}

// dockerHubPush is e as Docker Hub would announce the push. Docker Hub's own repositories
// are named as Docker Hub names them (library/nginx); another registry's carry its name in
// front (ghcr.io/org/app), so that a receiver can tell them apart.
func dockerHubPush(e feed.Event, hub bool) dockerHubPayload {
	repo := e.Registry + "/" + e.Repository
	if hub {
		repo = e.Repository
	}
	namespace, name := "", repo
	if i := strings.LastIndexByte(repo, '/'); i >= 0 {
		namespace, name = repo[:i], repo[i+1:]
	}
	var p dockerHubPayload
	p.PushData.Images = []string{}
	p.PushData.PushedAt = time.Now().Unix()
	if t, err := time.Parse(time.RFC3339, e.Time); err == nil {
		p.PushData.PushedAt = t.Unix()
	}
	p.PushData.Pusher = "regcache"
	p.PushData.Tag = e.Tag
	r := &p.Repository
	r.Name, r.Namespace, r.Owner, r.RepoName, r.Status = name, namespace, namespace, repo, "Active"
	if hub {
		r.IsOfficial = namespace == "library"
		r.RepoURL = "https://hub.docker.com/r/" + repo
		if r.IsOfficial {
			r.RepoURL = "https://hub.docker.com/_/" + name
		}
	}
	return p
}

// templateData is what a template URL's placeholders read, each URL-escaped.
type templateData struct{ Image, Repository, Tag, Digest string }

const placeholders = "{{.Image}}, {{.Repository}}, {{.Tag}} and {{.Digest}}"

// parseTemplate parses a template URL that holds text and the placeholders alone: no
// functions, conditions or loops (a {{range}} could make a URL of any length).
func parseTemplate(raw string) (*template.Template, error) {
	t, err := template.New("url").Option("missingkey=error").Parse(raw)
	if err != nil {
		return nil, err
	}
	for _, n := range t.Tree.Root.Nodes {
		if _, text := n.(*parse.TextNode); text {
			continue
		}
		if a, ok := n.(*parse.ActionNode); ok && len(a.Pipe.Decl) == 0 && len(a.Pipe.Cmds) == 1 && len(a.Pipe.Cmds[0].Args) == 1 {
			if f, ok := a.Pipe.Cmds[0].Args[0].(*parse.FieldNode); ok && len(f.Ident) == 1 &&
				slices.Contains([]string{"Image", "Repository", "Tag", "Digest"}, f.Ident[0]) {
				continue
			}
		}
		return nil, fmt.Errorf("%.40q is no placeholder", n.String())
	}
	return t, nil
}

// placeholderMark stands in for every placeholder when a template URL is checked: where
// it lands tells whether a placeholder sits in the host.
const placeholderMark = "regcacheplaceholder"

// CheckURL checks a hook's url for its format: http or https with a host, no credentials
// (they go in headers), and placeholders only with format template, there only in the
// path and query. Its errors never show the URL, whose path or query may hold a token.
func CheckURL(format, raw string) error {
	if !slices.Contains(Formats, format) {
		return fmt.Errorf("unknown format %q (%s)", format, strings.Join(Formats, ", "))
	}
	target := raw
	if format == FormatTemplate {
		t, err := parseTemplate(raw)
		if err != nil {
			return fmt.Errorf("%v (the placeholders are %s)", err, placeholders)
		}
		var b strings.Builder
		m := placeholderMark
		if err := t.Execute(&b, templateData{m, m, m, m}); err != nil {
			return fmt.Errorf("%v (the placeholders are %s)", err, placeholders)
		}
		target = b.String()
	} else if strings.Contains(raw, "{{") {
		return errors.New("placeholders such as {{.Image}} need format: template")
	}
	u, err := url.Parse(target)
	if err != nil || raw == "" {
		return errors.New("not a URL (e.g. https://hooks.example.com/regcache)")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("scheme must be http or https")
	}
	if u.Host == "" {
		return errors.New("no host")
	}
	if strings.Contains(u.Host, placeholderMark) {
		return errors.New("placeholders may stand in the path and query only, not in the host")
	}
	if u.User != nil {
		return errors.New("put credentials in headers: (Authorization), not in the URL")
	}
	return nil
}

// DefaultName is a hook's name when the config gives none: the URL's host and path, without
// its query or placeholders (they may hold tokens, or vary per event).
func DefaultName(raw string) string {
	s := raw
	if i := strings.Index(s, "{{"); i >= 0 {
		s = s[:i]
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "webhook"
	}
	// The host alone: many receivers (Slack, Discord, Teams) carry their credential in the
	// path, and the name is in every metric and log line.
	return u.Host
}
