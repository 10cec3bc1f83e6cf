//  wsr_session — (placeholder)
#ifndef WSR_SESSION_H_INCLUDED
#define WSR_SESSION_H_INCLUDED
#endif
