package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cyxwiz/cyxwiz-node/host/guest"
	"github.com/cyxwiz/cyxwiz-node/loaders"
	"github.com/cyxwiz/cyxwiz-node/loaders/tensor"
)

// codeOf maps the node's errors to gRPC codes. It is the one place where that
// happens: inner packages return wrapped sentinel errors, the interceptors
// below call this on the way out.
var codeOf = []struct {
	err  error
	code codes.Code
}{
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
	{loaders.ErrInvalidInput, codes.InvalidArgument},
	{tensor.ErrShape, codes.InvalidArgument},
	{loaders.ErrUnknownFormat, codes.InvalidArgument},
	{loaders.ErrInvalidModel, codes.FailedPrecondition},
	{loaders.ErrUnavailable, codes.FailedPrecondition},
	{loaders.ErrClosed, codes.Unavailable},
}

// registerCode adds a mapping for an error defined in a package that
// imports nothing of the server's (engine, deploy, guest).
func registerCode(err error, code codes.Code) {
	codeOf = append(codeOf, struct {
		err  error
		code codes.Code
	}{err, code})
}

// ToStatus converts err to a gRPC status error. An error that already
// carries a status keeps it; a known sentinel gets its code and the full
// message; anything else is Internal.
//
// The message is cut to maxStatusMessage bytes: it travels in an HTTP/2
// trailer, and one larger than the client's header limit (a message that
// quotes a 20 MB model name or a shape of a million dimensions) made the
// client tear down the whole connection, failing every call on it with
// UNAVAILABLE instead of this one with its code.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return capMessage(err)
	}
	for _, c := range codeOf {
		if errors.Is(err, c.err) {
			return capMessage(status.Error(c.code, err.Error()))
		}
	}
	// Last: a guest's own error may wrap the failure it passed on (a
	// model it called was busy or gone), whose code comes first.
	if errors.Is(err, guest.ErrGuest) {
		return capMessage(status.Error(codes.InvalidArgument, err.Error()))
	}
	return capMessage(status.Error(codes.Internal, err.Error()))
}

// maxStatusMessage bounds a status message, in bytes. gRPC C-core clients
// (Triton's and KServe's Python clients) refuse trailers over 8 KiB by
// default, and grpc-message is percent-encoded (a non-ASCII byte takes
// three).
const maxStatusMessage = 2048

// capMessage returns the status error err with its message cut to
// maxStatusMessage bytes, on a rune boundary, saying how much was cut. The
// code and details are kept.
func capMessage(err error) error {
	s, _ := status.FromError(err)
	msg := s.Message()
	if len(msg) <= maxStatusMessage {
		return err
	}
	cut := maxStatusMessage - 64 // room for the note
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	p := s.Proto()
	p.Message = fmt.Sprintf("%s... (%d more bytes)", msg[:cut], len(msg)-cut)
	return status.ErrorProto(p)
}

// checkedDecode returns a copy of desc whose unary handlers answer a
// request that does not decode with InvalidArgument: grpc-go makes a codec
// error Internal, before any interceptor runs. Streams get the same from
// checkedStream.
func checkedDecode(desc *grpc.ServiceDesc) *grpc.ServiceDesc {
	d := *desc
	d.Methods = slices.Clone(desc.Methods)
	for i := range d.Methods {
		h := d.Methods[i].Handler
		d.Methods[i].Handler = func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			return h(srv, ctx, func(v any) error {
				u := &undecoded{msg: v}
				if err := dec(u); err != nil {
					return err
				}
				if u.bad != nil {
					return decodeError(v, u.bad)
				}
				return nil
			}, interceptor)
		}
	}
	return &d
}

// checkedStream is a server stream whose received messages that do not
// decode are InvalidArgument, not Internal.
type checkedStream struct{ grpc.ServerStream }

func (s checkedStream) RecvMsg(m any) error {
	u := &undecoded{msg: m}
	if err := s.ServerStream.RecvMsg(u); err != nil {
		return err
	}
	if u.bad != nil {
		return decodeError(m, u.bad)
	}
	return nil
}

func unaryErrors(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err != nil {
			err = ToStatus(err)
			if status.Code(err) == codes.Internal {
				log.Error("internal error", "method", info.FullMethod, "err", err)
			}
		}
		return resp, err
	}
}

func streamErrors(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		err := handler(srv, checkedStream{ss})
		if err != nil {
			err = ToStatus(err)
			if status.Code(err) == codes.Internal {
				log.Error("internal error", "method", info.FullMethod, "err", err)
			}
		}
		return err
	}
}
