package virtq

import "fmt"

// ChainAt walks the chain whose head descriptor is head into c, without
// touching the avail ring or LastAvail. It is for resubmitting a chain that
// an earlier device instance took from the avail ring and never completed
// (vhost-user inflight I/O tracking): the driver still owns nothing of it,
// so its descriptors are as they were when it was taken.
//
// An error wraps ErrBadChain; c.Head is set even then, and the chain must
// still be pushed (with 0 bytes) to give the head back to the driver. A
// head outside the table is ErrBadChain too: the caller knows it only from
// its own records, not from the ring.
//
// On a packed ring head is a buffer ID AddInflight registered, and the
// chain is walked from the descriptors recorded there: the ring's may have
// been overwritten by used descriptors since. An ID not registered is
// ErrBadChain, and pushing it then stops the queue.
func (q *Queue) ChainAt(head uint16, c *Chain) error {
	c.Head = head
	c.Segments = c.Segments[:0]
	if q.broken != nil {
		return q.broken
	}
	if q.pk != nil {
		return q.chainAtPacked(head, c)
	}
	if head >= q.size {
		return fmt.Errorf("%w (head %d): outside a table of %d descriptors", ErrBadChain, head, q.size)
	}
	return q.walk(c)
}
