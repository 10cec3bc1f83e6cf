//  wsr_listener — (placeholder)
#ifndef WSR_LISTENER_H_INCLUDED
#define WSR_LISTENER_H_INCLUDED
#endif
