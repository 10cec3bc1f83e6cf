//  wsr_msgs — (placeholder)
#ifndef WSR_MSGS_H_INCLUDED
#define WSR_MSGS_H_INCLUDED
#endif
