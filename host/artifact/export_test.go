package artifact

// SetHookBeforeRemovePartial sets a function run before a failed download
// removes its partial file, until the returned restore is called.
func SetHookBeforeRemovePartial(f func()) (restore func()) {
	testHookBeforeRemovePartial = f
	return func() { testHookBeforeRemovePartial = nil }
}

// SetHookBeforeVerify sets a function run before the cached copy of a
// digest is hashed to verify it, until the returned restore is called.
func SetHookBeforeVerify(f func(digest string)) (restore func()) {
	testHookBeforeVerify = f
	return func() { testHookBeforeVerify = nil }
}
