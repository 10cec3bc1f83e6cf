//  wsr_outframe — (placeholder)
#ifndef WSR_OUTFRAME_H_INCLUDED
#define WSR_OUTFRAME_H_INCLUDED
#endif
