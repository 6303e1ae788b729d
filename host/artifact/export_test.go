package artifact

// SetHookBeforeRemovePartial sets a function run before a failed download
// removes its partial file, until the returned restore is called.
func SetHookBeforeRemovePartial(f func()) (restore func()) {
	testHookBeforeRemovePartial = f
	return func() { testHookBeforeRemovePartial = nil }
}
