// edgefleet's Go client: generated FrameStream and KServe v2 code (gen/, written by `make stubs`)
// and the camera example (cmd/camera). It builds with no network: `make stubs` vendors these
// exact versions from Debian 12's Go packages (scripts/go_vendor_debian.sh), see client/README.md.
module edgefleet/client/go

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)

require (
	github.com/golang/protobuf v1.5.2 // indirect
	golang.org/x/net v0.7.0 // indirect
	golang.org/x/sys v0.3.0 // indirect
	golang.org/x/text v0.7.0 // indirect
	google.golang.org/genproto v0.0.0-20200413115906-b5235f65be36 // indirect
)
