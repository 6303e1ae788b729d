//go:build !wasip1

package sdk

import "github.com/cyxwiz/cyxwiz-node/guests/abi"

// Off wasip1 there is no host: every host function fails with ENOCALL.

const noHost = int32(abi.ENOCALL)

func hostLog(int32, uint32, uint32) int32                                    { return noHost }
func configGet(uint32, uint32, uint32, uint32) int32                         { return noHost }
func lastError(uint32, uint32) int32                                         { return noHost }
func tensorNew(uint32, uint32, uint32, uint32, uint32, uint32, uint32) int32 { return noHost }
func tensorInfo(uint32, uint32, uint32) int32                                { return noHost }
func tensorRead(uint32, uint32, uint32) int32                                { return noHost }
func tensorName(uint32, uint32, uint32) int32                                { return noHost }
func tensorFree(uint32) int32                                                { return noHost }
func tensorPin(uint32) int32                                                 { return noHost }
func affine(uint32, float32, float32) int32                                  { return noHost }
func normalize(uint32, float32, uint32, uint32, uint32, int32) int32         { return noHost }
func softmax(uint32, int32) int32                                            { return noHost }
func topk(uint32, int32, uint32) int32                                       { return noHost }
func resize(uint32, int32, int32, int32) int32                               { return noHost }
func matmul(uint32, uint32) int32                                            { return noHost }
func add(uint32, uint32) int32                                               { return noHost }
func relu(uint32) int32                                                      { return noHost }
func transpose(uint32, uint32, uint32) int32                                 { return noHost }
func cast(uint32, uint32) int32                                              { return noHost }
func reshape(uint32, uint32, uint32) int32                                   { return noHost }
func concat(uint32, uint32) int32                                            { return noHost }
func imageDecode(uint32) int32                                               { return noHost }
func infer(uint32, uint32, uint32, uint32, uint32, uint32) int32             { return noHost }
