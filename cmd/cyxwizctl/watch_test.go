package main

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

// `watch --timeout D` streams for D and exits 0: the help says the timeout
// ends it. It exited 1 with "DeadlineExceeded: context deadline exceeded"
// or "stream terminated by RST_STREAM with error code: CANCEL". A node that
// cannot be reached is still an error.
func TestWatchTimeoutEndsCleanly(t *testing.T) {
	addr, _ := startNode(t)
	code, out, errOut := ctl("--addr", addr, "watch", "--timeout", "1s")
	if code != 0 || errOut != "" || !strings.Contains(out, "linear") {
		t.Errorf("watch --timeout: exit %d, stdout %q, stderr %q; want 0, the snapshot and no error", code, out, errOut)
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := lis.Addr().String()
	lis.Close()
	if code, _, errOut := ctl("--addr", gone, "watch", "--timeout", "2s"); code != 1 || !strings.Contains(errOut, "no node answers") {
		t.Errorf("watch of an unreachable node: exit %d, stderr %q; want 1", code, errOut)
	}
}

// oneEventWatch is a DeploymentService whose watch sends one event and ends.
type oneEventWatch struct {
	cyxwizpb.UnimplementedDeploymentServiceServer
	ev *cyxwizpb.DeploymentEvent
}

func (w oneEventWatch) WatchDeployments(_ *cyxwizpb.WatchDeploymentsRequest, s grpc.ServerStreamingServer[cyxwizpb.DeploymentEvent]) error {
	return s.Send(w.ev)
}

// watch prints its clock times in local time, as the node's log and the
// operator's clock show them: it printed them in UTC, with no zone to
// tell by. The watch runs in a child process whose TZ is UTC+2.
func TestWatchLocalTime(t *testing.T) {
	if addr := os.Getenv("CYXWIZCTL_TEST_WATCH_ADDR"); addr != "" { // the child
		os.Exit(run([]string{"--addr", addr, "watch"}, os.Stdout, os.Stderr))
	}
	at := time.Date(2026, 3, 1, 10, 20, 30, 0, time.UTC)
	ev := &cyxwizpb.DeploymentEvent{Status: &cyxwizpb.DeploymentStatus{DeploymentId: "d",
		State: cyxwizpb.DeploymentState_DEPLOYMENT_STATE_READY, UpdatedAt: timestamppb.New(at)}}
	addr := fakeServe(t, func(s *grpc.Server) { cyxwizpb.RegisterDeploymentServiceServer(s, oneEventWatch{ev: ev}) })
	cmd := exec.Command(os.Args[0], "-test.run=^TestWatchLocalTime$")
	cmd.Env = append(os.Environ(), "TZ=Etc/GMT-2", "CYXWIZCTL_TEST_WATCH_ADDR="+addr) // POSIX sign: GMT-2 is UTC+2
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || !strings.HasPrefix(string(out), "12:20:30.000 d ") {
		t.Errorf("watch in UTC+2 of a change at 10:20:30 UTC: %v, %q %q; want it at 12:20:30.000", err, out, stderr.String())
	}
}
