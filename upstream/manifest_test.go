package upstream

import (
	"context"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"

	"regcache/upstream/registrytest"
)

// TestManifestMustBeAManifest: a body that is JSON but no object (null, an array, a
// number, a string), or an object whose mediaType contradicts the Content-Type it came
// with, is refused as invalid, by tag and by digest; an object that names no mediaType, or
// that came with a generic Content-Type, is a manifest of the type that names it.
func TestManifestMustBeAManifest(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	r, err := New(Options{Name: "reg.test", URL: reg.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const manifest = `{"schemaVersion":2,"mediaType":"` + MediaTypeOCIManifest + `","config":{},"layers":[]}`
	for _, tc := range []struct {
		name, contentType, body, want string // want "" means refused
	}{
		{"null", MediaTypeOCIManifest, `null`, ""},
		{"null with spaces", MediaTypeOCIManifest, " null \n", ""},
		{"an array", MediaTypeOCIManifest, `[{"mediaType":"` + MediaTypeOCIManifest + `"}]`, ""},
		{"a number", MediaTypeOCIManifest, `123`, ""},
		{"a string", MediaTypeDockerManifest, `"` + MediaTypeDockerManifest + `"`, ""},
		{"mediaType contradicts Content-Type", MediaTypeDockerManifest, manifest, ""},
		{"mediaType contradicts Content-Type with parameters", MediaTypeOCIIndex + "; charset=utf-8", manifest, ""},
		{"generic Content-Type, mediaType not a media type", "application/json", `{"mediaType":"Not A Type\r\nX: 1"}`, ""},
		{"generic Content-Type, no mediaType", "application/json", `{"schemaVersion":2}`, ""},
		{"agrees", MediaTypeOCIManifest, manifest, MediaTypeOCIManifest},
		{"agrees, leading space", MediaTypeOCIManifest, "\n " + manifest, MediaTypeOCIManifest},
		{"no mediaType in the body", MediaTypeOCIManifest, `{"schemaVersion":2,"config":{},"layers":[]}`, MediaTypeOCIManifest},
		{"generic Content-Type", "application/octet-stream", manifest, MediaTypeOCIManifest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := digest.FromString(tc.body)
			reg.SetFault(registrytest.OnManifests(registrytest.Serve(tc.contentType, d.String(), []byte(tc.body))))
			for _, ref := range []string{"v1", d.String()} {
				m, err := r.GetManifest(context.Background(), "team/app", ref)
				switch {
				case tc.want == "" && (err == nil || !errors.Is(err, ErrInvalid)):
					t.Fatalf("GET %s: %+v, %v; want an invalid answer", ref, m.Descriptor, err)
				case tc.want != "" && err != nil:
					t.Fatalf("GET %s: %v", ref, err)
				case tc.want != "" && (m.MediaType != tc.want || m.Digest != d || string(m.Body) != tc.body):
					t.Fatalf("GET %s: %+v, want %s %s", ref, m.Descriptor, tc.want, d)
				}
			}
		})
	}
}
