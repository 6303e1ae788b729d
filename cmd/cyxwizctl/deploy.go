package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	cyxwizpb "github.com/cyxwiz/cyxwiz-node/proto/cyxwiz/protocol"
)

func init() {
	register("deploy", "deploy a model: deploy --id ID --model URI|FILE --format onnx [--sha256 H] [--pre g.wasm] [--post g.wasm]", runDeploy)
	register("ls", "list deployments [--state ready,failed,...]", runList)
	register("models", "list models and their state", runModels)
	register("status", "show one deployment: status ID", runStatus)
	register("stop", "stop a deployment: stop ID [--drain 10s]", runStop)
	register("watch", "stream deployment changes [ID ...]", runWatch)
}

// artifactFor turns a URI or a local file into an Artifact. Local files are
// sent as file:// URIs with their SHA-256, so the node verifies what it loads.
func artifactFor(ref, sum string) (*cyxwizpb.Artifact, error) {
	if u, err := url.Parse(ref); err == nil && (u.Scheme == "http" || u.Scheme == "https" || u.Scheme == "file") {
		return &cyxwizpb.Artifact{Uri: ref, Sha256: sum}, nil
	}
	abs, err := filepath.Abs(ref)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(abs)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, err
	}
	digest := hex.EncodeToString(h.Sum(nil))
	if sum != "" && !strings.EqualFold(sum, digest) {
		return nil, fmt.Errorf("%s: sha256 is %s, not %s", ref, digest, sum)
	}
	return &cyxwizpb.Artifact{Uri: (&url.URL{Scheme: "file", Path: abs}).String(), Sha256: digest, SizeBytes: n}, nil
}

func runDeploy(ctx context.Context, c *client, args []string) error {
	fs := flag.NewFlagSet("deploy", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	id := fs.String("id", "", "deployment id (required)")
	name := fs.String("name", "", "model name clients use (default: the id)")
	model := fs.String("model", "", "model URI (file://, http://, https://) or local file (required)")
	format := fs.String("format", "onnx", "model format")
	sum := fs.String("sha256", "", "model SHA-256 (computed for local files)")
	pre := fs.String("pre", "", "preprocess guest (.wasm file or URI)")
	post := fs.String("post", "", "postprocess guest (.wasm file or URI)")
	policy := fs.String("batch-policy", "", "batch-policy guest (.wasm file or URI)")
	maxBatch := fs.Int("max-batch", 0, "max batch size (0 = node default)")
	delay := fs.Duration("max-queue-delay", 0, "max queue delay")
	instances := fs.Int("instances", 0, "concurrent executions (0 = node default)")
	guestTimeout := fs.Duration("guest-timeout", 0, "per-call guest deadline (0 = node default)")
	var config multiFlag
	fs.Var(&config, "config", "key=value for the deployment's guests (repeatable)")
	noWait := fs.Bool("no-wait", false, "return once accepted")
	guestMem := fs.Uint("guest-memory-pages", 0, "memory limit of each guest in 64 KiB pages (0 = node default)")
	preciseClock := fs.Bool("guest-precise-clock", false, "give the guests full-resolution clocks (default: 1 ms ticks)")
	if err := fs.Parse(args); err != nil {
		return usagef("%v", err)
	}
	if *id == "" || *model == "" {
		return usagef("--id and --model are required")
	}
	if *guestMem > math.MaxUint32 {
		return usagef("--guest-memory-pages %d: at most %d", *guestMem, uint64(math.MaxUint32))
	}
	if *name == "" {
		*name = *id
	}
	art, err := artifactFor(*model, *sum)
	if err != nil {
		return err
	}
	spec := &cyxwizpb.DeploymentSpec{ModelName: *name, Format: *format, Model: art, Config: map[string]string{}}
	for _, kv := range config {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return usagef("--config %q: want key=value", kv)
		}
		spec.Config[k] = v
	}
	for _, g := range []struct {
		ref  string
		role cyxwizpb.GuestRole
		name string
	}{{*pre, cyxwizpb.GuestRole_GUEST_ROLE_PREPROCESS, "pre"}, {*post, cyxwizpb.GuestRole_GUEST_ROLE_POSTPROCESS, "post"},
		{*policy, cyxwizpb.GuestRole_GUEST_ROLE_BATCH_POLICY, "batch-policy"}} {
		if g.ref == "" {
			continue
		}
		a, err := artifactFor(g.ref, "")
		if err != nil {
			return err
		}
		gm := &cyxwizpb.GuestModule{Name: g.name, Artifact: a, Roles: []cyxwizpb.GuestRole{g.role},
			MemoryLimitPages: uint32(*guestMem), PreciseClock: *preciseClock}
		if *guestTimeout > 0 {
			gm.CallTimeout = durationpb.New(*guestTimeout)
		}
		spec.Guests = append(spec.Guests, gm)
	}
	if *maxBatch > 0 || *delay > 0 || *instances > 0 {
		spec.Batching = &cyxwizpb.BatchingConfig{MaxBatchSize: uint32(*maxBatch), MaxQueueDelayUs: uint64(delay.Microseconds()), Instances: uint32(*instances)}
	}

	cli := cyxwizpb.NewDeploymentServiceClient(c.conn)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stream cyxwizpb.DeploymentService_WatchDeploymentsClient
	if !*noWait {
		// Watch (with a snapshot) before assigning so that no change is
		// missed, whichever reaches the node first.
		if stream, err = cli.WatchDeployments(wctx, &cyxwizpb.WatchDeploymentsRequest{DeploymentIds: []string{*id}, Snapshot: true}); err != nil {
			return err
		}
	}
	resp, err := cli.AssignDeployment(ctx, &cyxwizpb.AssignDeploymentRequest{DeploymentId: *id, Spec: spec})
	if err != nil {
		return err
	}
	if *noWait || settled(resp.Status.State) {
		printStatusLine(c.out, resp.Status)
		return failedErr(resp.Status)
	}
	bar := newProgressBar(c.out)
	for {
		ev, err := stream.Recv()
		if err != nil {
			return err
		}
		st := ev.Status
		if st.UpdatedAt.AsTime().Before(resp.Status.UpdatedAt.AsTime()) {
			continue // from before this assignment (a re-deploy of a stopped id)
		}
		bar.update(st)
		if settled(st.State) {
			bar.done()
			printStatusLine(c.out, st)
			return failedErr(st)
		}
	}
}

func settled(s cyxwizpb.DeploymentState) bool {
	switch s {
	case cyxwizpb.DeploymentState_DEPLOYMENT_STATE_READY, cyxwizpb.DeploymentState_DEPLOYMENT_STATE_RUNNING,
		cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED, cyxwizpb.DeploymentState_DEPLOYMENT_STATE_STOPPED:
		return true
	}
	return false
}

func failedErr(st *cyxwizpb.DeploymentStatus) error {
	if st.State == cyxwizpb.DeploymentState_DEPLOYMENT_STATE_FAILED {
		return fmt.Errorf("deployment %s failed: %s", st.DeploymentId, st.Message)
	}
	return nil
}

func stateName(s cyxwizpb.DeploymentState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "DEPLOYMENT_STATE_"))
}

func printStatusLine(w io.Writer, st *cyxwizpb.DeploymentStatus) {
	fmt.Fprintf(w, "%s: %s (%s)\n", st.DeploymentId, stateName(st.State), st.Message)
}

// progressBar draws one line that it rewrites while fetching/loading.
type progressBar struct {
	w     io.Writer
	drawn bool
}

func newProgressBar(w io.Writer) *progressBar { return &progressBar{w: w} }

func (p *progressBar) update(st *cyxwizpb.DeploymentStatus) {
	line := fmt.Sprintf("%-9s %s", stateName(st.State), st.Message)
	if pr := st.Progress; pr != nil && pr.TotalBytes > 0 {
		frac := min(float64(pr.DoneBytes)/float64(pr.TotalBytes), 1) // a server may overshoot
		n := int(frac * 30)
		line = fmt.Sprintf("%-9s [%s%s] %3.0f%% %s/%s %s", stateName(st.State), strings.Repeat("#", n), strings.Repeat(".", 30-n),
			frac*100, humanBytes(pr.DoneBytes), humanBytes(pr.TotalBytes), pr.Phase)
	}
	fmt.Fprintf(p.w, "\r%-80s", line)
	p.drawn = true
}

func (p *progressBar) done() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func runList(ctx context.Context, c *client, args []string) error {
	fs := flag.NewFlagSet("ls", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	states := fs.String("state", "", "comma-separated states to show (pending,fetching,loading,ready,running,stopping,stopped,failed)")
	if err := fs.Parse(args); err != nil {
		return usagef("%v", err)
	}
	req := &cyxwizpb.ListDeploymentsRequest{}
	for _, s := range strings.Split(*states, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		v, ok := cyxwizpb.DeploymentState_value["DEPLOYMENT_STATE_"+strings.ToUpper(s)]
		if !ok {
			return usagef("unknown state %q", s)
		}
		req.States = append(req.States, cyxwizpb.DeploymentState(v))
	}
	resp, err := cyxwizpb.NewDeploymentServiceClient(c.conn).ListDeployments(ctx, req)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMODEL\tFORMAT\tSTATE\tOWNER\tAGE\tMESSAGE")
	for _, d := range resp.Deployments {
		age := ""
		if d.CreatedAt != nil {
			age = time.Since(d.CreatedAt.AsTime()).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.DeploymentId, d.Spec.GetModelName(), d.Spec.GetFormat(), stateName(d.State), d.Owner, age, d.Message)
	}
	return tw.Flush()
}

func runModels(ctx context.Context, c *client, _ []string) error {
	resp, err := cyxwizpb.NewDeploymentServiceClient(c.conn).ListDeployments(ctx, &cyxwizpb.ListDeploymentsRequest{})
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tVERSION\tFORMAT\tSTATE")
	for _, d := range resp.Deployments {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Spec.GetModelName(), d.Spec.GetModelVersion(), d.Spec.GetFormat(), stateName(d.State))
	}
	return tw.Flush()
}

func runStatus(ctx context.Context, c *client, args []string) error {
	if len(args) != 1 {
		return usagef("want: status ID")
	}
	resp, err := cyxwizpb.NewDeploymentServiceClient(c.conn).GetDeploymentStatus(ctx, &cyxwizpb.GetDeploymentStatusRequest{DeploymentId: args[0]})
	if err != nil {
		return err
	}
	st := resp.Status
	fmt.Fprintf(c.out, "id:       %s\nmodel:    %s (version %s, %s)\nstate:    %s\nmessage:  %s\nowner:    %s\nmemory:   %s\n",
		st.DeploymentId, st.Spec.GetModelName(), st.Spec.GetModelVersion(), st.Spec.GetFormat(), stateName(st.State), st.Message, st.Owner, humanBytes(st.MemoryBytes))
	if st.CreatedAt != nil {
		fmt.Fprintf(c.out, "created:  %s\nupdated:  %s\n", st.CreatedAt.AsTime().Format(time.RFC3339), st.UpdatedAt.AsTime().Format(time.RFC3339))
	}
	fmt.Fprintf(c.out, "artifact: %s sha256=%s\n", st.Spec.GetModel().GetUri(), st.Spec.GetModel().GetSha256())
	for _, g := range st.Spec.GetGuests() {
		fmt.Fprintf(c.out, "guest:    %s %v %s\n", g.Name, g.Roles, g.GetArtifact().GetUri())
	}
	return nil
}

func runStop(ctx context.Context, c *client, args []string) error {
	fs := flag.NewFlagSet("stop", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	drain := fs.Duration("drain", 0, "how long to wait for in-flight requests (0 = node default)")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("want: stop ID [--drain 10s]")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return usagef("%v", err)
	}
	req := &cyxwizpb.StopDeploymentRequest{DeploymentId: args[0]}
	if *drain > 0 {
		req.DrainTimeout = durationpb.New(*drain)
	}
	resp, err := cyxwizpb.NewDeploymentServiceClient(c.conn).StopDeployment(ctx, req)
	if err != nil {
		return err
	}
	printStatusLine(c.out, resp.Status)
	return nil
}

func runWatch(ctx context.Context, c *client, args []string) error {
	stream, err := cyxwizpb.NewDeploymentServiceClient(c.conn).WatchDeployments(ctx, &cyxwizpb.WatchDeploymentsRequest{DeploymentIds: args, Snapshot: true})
	if err != nil {
		return err
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		st := ev.Status
		prog := ""
		if p := st.Progress; p != nil && p.TotalBytes > 0 {
			prog = fmt.Sprintf(" %s/%s", humanBytes(p.DoneBytes), humanBytes(p.TotalBytes))
		}
		fmt.Fprintf(c.out, "%s %-12s %-9s %s%s\n", st.UpdatedAt.AsTime().Format("15:04:05.000"), st.DeploymentId, stateName(st.State), st.Message, prog)
	}
}
