# syntax=docker/dockerfile:1
# Build a static binary, then ship it alone on a minimal base as a non-root user.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/regcache ./cmd/regcache && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/regcache /regcache
# cache.snapshot's usual directory, owned by the user regcache runs as: a volume mounted
# here starts with that owner, so the snapshot can be written.
COPY --from=build --chown=65532:65532 /out/data /var/lib/regcache
USER 65532:65532
EXPOSE 5000
ENTRYPOINT ["/regcache"]
