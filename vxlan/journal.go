package vxlan

import "errors"

// journal records how to undo each step of a multi-step operation, so that
// a failure part-way leaves things as they were.
type journal struct {
	undo []func() error
}

// done records that a step succeeded and how to undo it.
func (j *journal) done(undo func() error) {
	j.undo = append(j.undo, undo)
}

// rollback undoes the recorded steps, last first, and returns the errors of
// those it could not undo.
func (j *journal) rollback() error {
	var errs []error
	for i := len(j.undo) - 1; i >= 0; i-- {
		if err := j.undo[i](); err != nil {
			errs = append(errs, err)
		}
	}
	j.undo = nil
	if len(errs) > 0 {
		return errors.Join(append([]error{errors.New("undo failed")}, errs...)...)
	}
	return nil
}
