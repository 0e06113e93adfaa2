package registrytest

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// PushBlob stores data as a blob of repo and returns its digest.
func (r *Registry) PushBlob(t testing.TB, repo string, data []byte) string {
	t.Helper()
	layer := static.NewLayer(data, types.OCILayer)
	ref := r.seedRef(t, repo, "unused")
	if err := remote.WriteLayer(ref.Context(), layer); err != nil {
		t.Fatalf("seeding blob: %v", err)
	}
	d, _ := layer.Digest()
	return d.String()
}

// ConfigOf returns the raw config blob and digest of image repo:tag as stored.
func (r *Registry) ConfigOf(t testing.TB, repo, tag string) (v1.Hash, []byte) {
	t.Helper()
	img, err := remote.Image(r.seedRef(t, repo, tag))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := img.ConfigName()
	return d, raw
}
