// A stand-in for the Tencent Cloud VPC SDK, which the Go module proxy here
// does not serve (see ../go.mod): it only lets flanneld compile.
module github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc

go 1.21
