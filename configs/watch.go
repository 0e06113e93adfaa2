package configs

// The watch: list, checked at start-up: each entry names a tag, or a repository and the
// tags of it to watch, on a configured upstream.

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/distribution/reference"
)

// Watch is one entry of watch:: an image (registry/repository:tag) kept revalidated every
// tag TTL with no client asking, or a repository whose tags matching Tags are, and whose
// tag list is read each TTL for tags created and deleted.
type Watch struct {
	Image      string `yaml:"image"`
	Repository string `yaml:"repository"`
	// Tags is a regular expression (Go syntax, unanchored: write ^...$) of the tags of
	// Repository to watch.
	Tags string `yaml:"tags"`
}

// Named is the entry's image or repository, normalized Docker-style (nginx is
// docker.io/library/nginx:latest), and for a repository its compiled tag pattern.
func (w *Watch) Named() (reference.Named, *regexp.Regexp, error) {
	if w.Image != "" {
		named, err := reference.ParseNormalizedNamed(w.Image)
		if err != nil {
			return nil, nil, fmt.Errorf("image: %q is not an image reference: %v", w.Image, err)
		}
		if _, ok := named.(reference.Digested); ok {
			return nil, nil, fmt.Errorf("image: %q names a digest, which never moves; name a tag", w.Image)
		}
		return reference.TagNameOnly(named), nil, nil
	}
	named, err := reference.ParseNormalizedNamed(w.Repository)
	if err != nil {
		return nil, nil, fmt.Errorf("repository: %q is not a repository name: %v", w.Repository, err)
	}
	if !reference.IsNameOnly(named) {
		return nil, nil, fmt.Errorf("repository: %q names a tag or digest; write the repository alone and the tags in tags:", w.Repository)
	}
	re, err := regexp.Compile(w.Tags)
	if err != nil {
		return nil, nil, fmt.Errorf("tags: %q is not a regular expression: %v", w.Tags, err)
	}
	return named, re, nil
}

func (c *Config) validateWatch() error {
	seen := map[string]int{}
	for i := range c.Watch {
		w := &c.Watch[i]
		key := fmt.Sprintf("watch[%d]", i)
		switch {
		case (w.Image == "") == (w.Repository == ""):
			return fmt.Errorf("%s: set either image (a tag to watch) or repository (with tags: a pattern of its tags)", key)
		case w.Image != "" && w.Tags != "":
			return fmt.Errorf("%s.tags: goes with repository, not image", key)
		case w.Repository != "" && w.Tags == "":
			return fmt.Errorf("%s.tags: a repository watch needs a pattern of the tags to watch (e.g. %q; \".*\" for every tag)", key, `^\d+\.\d+\.\d+$`)
		}
		named, _, err := w.Named()
		if err != nil {
			return fmt.Errorf("%s.%v", key, err)
		}
		field := "image"
		if w.Repository != "" {
			field = "repository"
		}
		u := c.Lookup(reference.Domain(named))
		if u == nil {
			written := w.Image + w.Repository
			if first, _, ok := strings.Cut(written, "/"); ok && c.Lookup(first) != nil {
				// Docker's rule: a first part without "." or ":" (and not localhost) is a
				// Docker Hub user, not a registry.
				return fmt.Errorf("%s.%s: %q reads as %s (Docker-style names: a first part without \".\" or \":\" is a "+
					"Docker Hub user); give upstream %q a host-like name or alias (e.g. %s.local)", key, field, written, named.String(), first, first)
			}
			return fmt.Errorf("%s.%s: registry %q is not configured in upstreams", key, field, reference.Domain(named))
		}
		if c.TagTTLFor(u) <= 0 {
			return fmt.Errorf("%s.%s: upstream %s has a tag_ttl of 0 (nothing stays fresh), so a watch would ask it "+
				"over and over; give it a tag_ttl", key, field, u.Name)
		}
		// The same name twice would be two listings, and each event twice.
		name := strings.ToLower(u.Name) + "/" + reference.Path(named)
		if t, ok := named.(reference.Tagged); ok {
			name += ":" + t.Tag()
		}
		if prev, dup := seen[name]; dup {
			return fmt.Errorf("%s.%s: %q is watched by watch[%d] already", key, field, named.String(), prev)
		}
		seen[name] = i
	}
	return nil
}
